"""Hard-negative export: ``negminer mine``.

For every query of a split, score all targets with the model (exact search), drop positives, targets with
the same text as a positive, and likely unlabelled positives (sentence-transformers' / NV-Retriever's
false-negative filters, any of them set, a candidate dropped when any drops it): candidates scoring above
``positive - margin`` (``--margin``), above ``positive - |positive| x R`` (``--relative-margin R``, i.e.
positive x (1 - R) for a positive score >= 0) or above ``--max-score S``, the positive being the query's
best-scoring one; optionally skip the first ``skip`` ranks, and keep the next K. The search window grows
with the dropped candidates, so the K kept are exactly the best K that pass (no window truncation).

Formats, one object per line (JSONL; a ``.parquet`` ``--out`` writes the same rows as parquet, via datasets):
  * ``flag`` (default): {"query": str, "pos": [str], "neg": [str], "query_id", "pos_ids", "neg_ids",
    "neg_scores"}; FlagEmbedding's fine-tuning data reads query/pos/neg, extra keys are ignored.
  * sentence-transformers' ``mine_hard_negatives(output_format=...)`` formats, column for column (its
    anchor / positive columns named ``anchor`` and ``positive``), one row per (query, positive) unless said:
      - ``triplet``: {"anchor", "positive", "negative"}: one row per (query, positive, negative);
      - ``n-tuple`` (alias ``st``): {"anchor", "positive", "negative_1", ..., "negative_K"}; queries with
        fewer than K negatives left out (as sentence-transformers does);
      - ``n-tuple-scores``: n-tuple + "scores": [positive score, negative_1's, ..., negative_K's]
        (sentence-transformers' deprecated name of n-tuple with output_scores=True);
      - ``labeled-pair``: {"anchor", "positive", "label"}: per query, a row per positive (label 1), then a
        row per negative (label 0), the text in "positive" either way;
      - ``labeled-list``: {"anchor", "positive": [the positive, negatives...], "labels": [1, 0, ...]}; rows
        without negatives left out.
    Load with ``datasets.load_dataset("json", data_files=FILE)`` (or "parquet").
``train --negatives mined --mined-file FILE`` reads every one of them back (data/mined.py), JSONL or parquet,
to the same negatives per query (the text formats by target text). Options and ``--out`` are checked before
any work.
"""

from __future__ import annotations

import io
import json
import math
import sys
import time
from pathlib import Path

import torch

from negminer.errors import ConfigError, SaveError
from negminer.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, check_output
from negminer.samplers.base import score_threshold
from negminer.types import Exclusions
from negminer.train.duplicates import duplicate_groups

FORMATS = ("flag", "triplet", "n-tuple", "n-tuple-scores", "labeled-pair", "labeled-list")
ALIASES = {"st": "n-tuple"}  # negminer's earlier name of the n-tuple format


def mine(model, dataset, split: str = "train", top_k: int = 10, margin: float | None = None, skip: int = 0,
         batch_size: int = 128, progress: bool = False, relative_margin: float | None = None,
         max_score: float | None = None, positive_scores: bool = False):
    """Yields (qid, positive rows, [(row, score)] negatives) for each query of ``split``; with
    ``positive_scores``, (qid, [(row, score)] positives, [(row, score)] negatives)."""
    pos = dataset.positives(split)
    qids = [q for q in dataset.query_ids if q in pos]
    inputs = dataset.target_inputs()
    dups = duplicate_groups(inputs)
    E = model.encode_targets(inputs, batch_size=batch_size, progress=progress)
    Q = model.encode_queries([dataset.query_texts[dataset.query_index[q]] for q in qids], batch_size=batch_size,
                             progress=progress)
    want = top_k + skip
    filtered = margin is not None or relative_margin is not None or max_score is not None
    for s in range(0, len(qids), 256):
        chunk = qids[s:s + 256]
        excl = [set(pos[q]).union(*(dups.get(r, ()) for r in pos[q])) for q in chunk]
        scores = Q[s:s + 256] @ E.T
        over, extra = None, 0
        if filtered:  # the best-scoring positive's thresholds; the window grows by the candidates they drop
            s_pos = torch.stack([scores[n, sorted(pos[q])].max() for n, q in enumerate(chunk)])
            over = score_threshold(s_pos, margin, relative_margin, max_score).unsqueeze(1)
            extra = int((scores > over).sum(1).max())
        top_s, top_i = scores.topk(min(len(E), want + max(map(len, excl)) + extra + 16), dim=1)
        bad = Exclusions(excl, len(E)).contains(top_i)
        if over is not None:
            bad |= top_s > over
        for n, qid in enumerate(chunk):
            keep = ~bad[n]
            kept = list(zip(top_i[n][keep].tolist(), top_s[n][keep].tolist()))
            rows = sorted(pos[qid])
            if positive_scores:
                rows = list(zip(rows, scores[n, rows].tolist()))
            yield qid, rows, kept[skip:skip + top_k]


def records(fmt: str, qtext: str, pos: list[tuple[str, float]], negs: list[tuple[str, float]], top_k: int,
            flag_extra: dict | None = None) -> list[dict]:
    """The rows of one query in format ``fmt`` (canonical name): ``pos`` / ``negs`` as (text, score)."""
    if fmt == "flag":
        return [{"query": qtext, "pos": [t for t, _ in pos], "neg": [t for t, _ in negs], **(flag_extra or {})}]
    if fmt == "triplet":
        return [{"anchor": qtext, "positive": p, "negative": n} for p, _ in pos for n, _ in negs]
    if fmt in ("n-tuple", "n-tuple-scores"):
        if len(negs) < top_k:  # fixed columns: queries with fewer candidates are left out
            return []
        out = []
        for p, ps in pos:
            row = {"anchor": qtext, "positive": p}
            row.update({f"negative_{j + 1}": n for j, (n, _) in enumerate(negs)})
            if fmt == "n-tuple-scores":
                row["scores"] = [ps] + [v for _, v in negs]
            out.append(row)
        return out
    if fmt == "labeled-pair":
        return ([{"anchor": qtext, "positive": p, "label": 1} for p, _ in pos]
                + [{"anchor": qtext, "positive": n, "label": 0} for n, _ in negs])
    if fmt == "labeled-list":
        return [] if not negs else [{"anchor": qtext, "positive": [p] + [n for n, _ in negs],
                                     "labels": [1] + [0] * len(negs)} for p, _ in pos]
    raise ValueError(fmt)


def mine_command(model_dir, data, out, split="train", top_k=10, margin=None, skip=0, fmt="flag", quiet=False,
                 relative_margin=None, max_score=None) -> int:
    from negminer.data.load import load_dataset
    from negminer.encoders import build_encoder

    fmt = check_options(top_k, skip, margin, fmt, relative_margin, max_score)
    out = check_out(Path(out), quiet)
    parquet = is_parquet(out)
    if parquet:
        _need_datasets()
    ds = load_dataset(data)
    model = build_encoder(str(model_dir))
    texts = ds.target_inputs()
    rows, n = [], 0
    t0 = time.perf_counter()
    for qid, pos, negs in mine(model, ds, split, top_k, margin, skip, progress=not quiet,
                               relative_margin=relative_margin, max_score=max_score, positive_scores=True):
        qtext = ds.query_texts[ds.query_index[qid]]
        extra = {"query_id": qid, "pos_ids": [ds.target_ids[r] for r, _ in pos],
                 "neg_ids": [ds.target_ids[r] for r, _ in negs], "neg_scores": [round(v, 5) for _, v in negs]}
        got = records(fmt, qtext, [(texts[r], v) for r, v in pos], [(texts[r], v) for r, v in negs], top_k,
                      extra if fmt == "flag" else None)
        rows.extend(got)
        if got and (negs or fmt != "labeled-pair"):  # queries written (labeled-pair: with negatives)
            n += 1
    if parquet:
        _save(out, atomic_write_bytes, _parquet_bytes(rows, quiet))
    else:
        _save(out, atomic_write_text, "".join(json.dumps(r) + "\n" for r in rows))
    seconds = time.perf_counter() - t0  # encoding, search and writing; not loading the model or data
    _save(Path(f"{out}.meta.json"), atomic_write_json, {
        "model": str(model_dir), "data": str(data), "split": split, "top_k": top_k, "margin": margin,
        "relative_margin": relative_margin, "max_score": max_score, "skip": skip, "format": fmt,
        "file": "parquet" if parquet else "jsonl", "queries": n, "rows": len(rows), "targets": ds.num_targets,
        "seconds": round(seconds, 3)})
    if not quiet:
        print(f"mined {top_k} negatives for {n} queries of {ds.name}/{split} in {seconds:.1f} s -> {out} "
              f"({fmt}, {len(rows)} rows; + {Path(out).name}.meta.json)", file=sys.stderr)
    return 0


def is_parquet(path) -> bool:
    return str(path).lower().endswith(".parquet")


def _need_datasets() -> None:
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise ConfigError("--out *.parquet is written with the datasets package: pip install 'negminer[hf]' "
                          "(or write JSONL)") from None


def _parquet_bytes(rows: list[dict], quiet: bool = False) -> bytes:
    import datasets

    was = datasets.is_progress_bar_enabled()
    if quiet and was:
        datasets.disable_progress_bars()
    try:
        buf = io.BytesIO()
        datasets.Dataset.from_list(rows).to_parquet(buf)
        return buf.getvalue()
    finally:
        if quiet and was:
            datasets.enable_progress_bars()


def check_options(top_k: int, skip: int, margin: float | None, fmt: str, relative_margin: float | None = None,
                  max_score: float | None = None) -> str:
    """The canonical name of ``fmt`` (``st`` -> ``n-tuple``), after checking every option."""
    fmt = ALIASES.get(fmt, fmt)
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)} (or st = n-tuple), not {fmt!r}")
    if top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {top_k}")
    if skip < 0:
        raise ConfigError(f"--skip must be >= 0, got {skip}")
    if margin is not None and not math.isfinite(margin):
        raise ConfigError(f"--margin must be a finite number, got {margin}")
    if relative_margin is not None and not 0 <= relative_margin <= 1:  # (nan fails both)
        raise ConfigError(f"--relative-margin must be between 0 and 1, got {relative_margin}")
    if max_score is not None and not math.isfinite(max_score):
        raise ConfigError(f"--max-score must be a finite number, got {max_score}")
    return fmt


def check_out(out: Path, quiet: bool) -> Path:
    """``out`` if it and its ``.meta.json`` can be written (checked before any encoding)."""
    for p in (out, Path(f"{out}.meta.json")):
        check_output(p, "--out", folder=False)
    if not out.absolute().parent.exists() and not quiet:  # the atomic write makes it
        print(f"negminer: note: --out folder {out.absolute().parent} does not exist; it will be created",
              file=sys.stderr)
    return out


def _save(path: Path, write, obj) -> None:
    try:
        write(path, obj)
    except OSError as e:
        raise SaveError(f"{path}: writing failed ({e.strerror or e}); the previous file, if any, is intact") from None


from negminer._callable import make_callable  # noqa: E402

make_callable(__name__, "mine")  # negminer.mine(...) is the API's, also once this module is imported
