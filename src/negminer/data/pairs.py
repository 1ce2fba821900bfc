"""Plain JSONL pairs: one object per line with a query, its positive(s) and optional negatives.

Accepted keys (the sentence-transformers and FlagEmbedding conventions):
``query`` | ``anchor`` | ``question``; ``positive`` | ``pos`` (string or list);
``negative`` | ``negatives`` | ``neg`` (string or list, optional).
A file gives split ``train``; a folder of ``train.jsonl`` / ``dev.jsonl`` / ``test.jsonl`` gives those
splits (``validation`` is read as ``dev``); a folder holding a single other ``.jsonl`` gives ``train``.
A file passed directly is read alone (its siblings are not looked at). Targets are the unique texts
(id = ``t`` + 16 hex of their SHA-1; queries likewise with ``q``); a query text seen on several lines
becomes one query with all those positives. Given negatives go to ``hard_negatives`` (deduplicated,
never one of the query's positives).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from negminer.data.dataset import Dataset
from negminer.data.readers import json_records, text_value
from negminer.errors import DataError

QUERY_KEYS = ("query", "anchor", "question")
POS_KEYS = ("positive", "pos", "positives")
NEG_KEYS = ("negative", "negatives", "neg")
SPLITS = ("train", "dev", "validation", "test")


def _hid(prefix: str, text: str) -> str:
    return prefix + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _texts(path, no, rec, keys, required):
    key = next((k for k in keys if k in rec), None)
    if key is None:
        if required:
            raise DataError(path, f"missing (expected one of {', '.join(keys)})", line=no, field=keys[0])
        return []
    v = rec[key]
    if isinstance(v, str):
        vals, names = [v], [key]
    elif isinstance(v, list):
        vals, names = v, [f"{key}[{i}]" for i in range(len(v))]
    else:
        raise DataError(path, f"expected a string or a list of strings, got {type(v).__name__}", line=no, field=key)
    if required and not vals:
        raise DataError(path, "empty list", line=no, field=key)
    for x, name in zip(vals, names):
        if not text_value(path, no, x, name).strip():
            raise DataError(path, "empty text", line=no, field=name)
    return vals


def pair_files(path: Path) -> dict[str, Path]:
    """split -> file: a file is ``train``; a folder gives its train/dev/validation/test.jsonl[.gz],
    or, with none of those, its only .jsonl file as ``train``."""
    if path.is_file():
        return {"train": path}
    if not path.is_dir():
        return {}
    found = {}
    for s in SPLITS:
        for name in (f"{s}.jsonl", f"{s}.jsonl.gz"):
            if s not in found and (path / name).is_file():
                found[s] = path / name
    if not found:
        files = sorted(path.glob("*.jsonl")) + sorted(path.glob("*.jsonl.gz"))
        if len(files) == 1:
            found["train"] = files[0]
    return found


def load_pairs(path: str | Path, name: str | None = None) -> Dataset:
    path = Path(path)
    files = pair_files(path)
    if not files:
        raise DataError(path, "no JSONL pairs file (train.jsonl, dev.jsonl, test.jsonl, or a single .jsonl)")
    targets: dict[str, str] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, dict[str, int]]] = {}
    negs: dict[str, list[str]] = {}
    for split, f in files.items():
        split = "dev" if split == "validation" else split
        judged = qrels.setdefault(split, {})
        for no, rec in json_records(f):
            q = _texts(f, no, rec, QUERY_KEYS, True)
            if len(q) != 1:
                raise DataError(f, "expected one query string", line=no, field="query")
            qid = _hid("q", q[0])
            queries[qid] = q[0]
            for t in _texts(f, no, rec, POS_KEYS, True):
                tid = _hid("t", t)
                targets[tid] = t
                judged.setdefault(qid, {})[tid] = 1
            for key in ("label", "labels", "score"):  # sentence-transformers' labelled rows: data/hfdata.py's
                if key in rec:
                    raise DataError(f, f"a '{key}' column from this line on, but not on the first line: the file "
                                    "was read as plain pairs; put the column on every line", line=no, field=key)
            numbered = sorted((k for k in rec if k.startswith("negative_") and k[9:].isdigit()), key=lambda k: int(k[9:]))
            for t in _texts(f, no, rec, NEG_KEYS, False) + [x for k in numbered if rec[k] is not None
                                                        for x in _texts(f, no, rec, (k,), False)]:
                tid = _hid("t", t)
                targets[tid] = t
                negs.setdefault(qid, []).append(tid)
    for qid, ids in negs.items():  # once each, never one of the query's own positives
        pos = {t for judged in qrels.values() for t in judged.get(qid, {})}
        negs[qid] = [t for t in dict.fromkeys(ids) if t not in pos]
    tids = list(targets)
    return Dataset(name or path.name.split(".")[0], tids, [targets[t] for t in tids], [""] * len(tids), list(queries),
                   list(queries.values()), qrels, hard_negatives=negs, source=str(path))
