"""Hard-negative export: ``negminer mine``.

For every query of a split, score all targets with the model (exact search), drop positives,
targets with the same text as a positive, and candidates scoring above ``positive - margin``
(likely unlabelled positives), optionally skip the first ``skip`` ranks, and keep the next K.

Formats (JSONL, one object per line):
  * ``flag`` (default): {"query": str, "pos": [str], "neg": [str], "query_id", "pos_ids", "neg_ids",
    "neg_scores"}; FlagEmbedding's fine-tuning data reads query/pos/neg, extra keys are ignored.
  * ``st``: {"anchor": str, "positive": str, "negative_1": str, ..., "negative_K": str}, one line per
    (query, positive): load with ``datasets.load_dataset("json", data_files=FILE)`` and train with
    sentence-transformers' MultipleNegativesRankingLoss.
``train --negatives mined --mined-file FILE`` reads either. Options and ``--out`` are checked before any work.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

from negminer.errors import ConfigError, SaveError
from negminer.fileio import atomic_write_json, atomic_write_text, check_output
from negminer.types import Exclusions
from negminer.train.duplicates import duplicate_groups


def mine(model, dataset, split: str = "train", top_k: int = 10, margin: float | None = None, skip: int = 0,
         batch_size: int = 128, progress: bool = False):
    """Yields (qid, positive rows, [(row, score)] negatives) for each query of ``split``."""
    pos = dataset.positives(split)
    qids = [q for q in dataset.query_ids if q in pos]
    inputs = dataset.target_inputs()
    dups = duplicate_groups(inputs)
    E = model.encode_targets(inputs, batch_size=batch_size, progress=progress)
    Q = model.encode_queries([dataset.query_texts[dataset.query_index[q]] for q in qids], batch_size=batch_size,
                             progress=progress)
    want = top_k + skip
    for s in range(0, len(qids), 256):
        chunk = qids[s:s + 256]
        excl = [set(pos[q]).union(*(dups.get(r, ()) for r in pos[q])) for q in chunk]
        scores = Q[s:s + 256] @ E.T
        top_s, top_i = scores.topk(min(len(E), want + max(map(len, excl)) + 16), dim=1)
        bad = Exclusions(excl, len(E)).contains(top_i)
        if margin is not None:
            s_pos = torch.stack([scores[n, sorted(pos[q])].max() for n, q in enumerate(chunk)])
            bad |= top_s > (s_pos - margin).unsqueeze(1)
        for n, qid in enumerate(chunk):
            keep = ~bad[n]
            kept = list(zip(top_i[n][keep].tolist(), top_s[n][keep].tolist()))
            yield qid, sorted(pos[qid]), kept[skip:skip + top_k]


def mine_command(model_dir, data, out, split="train", top_k=10, margin=None, skip=0, fmt="flag", quiet=False) -> int:
    from negminer.data.load import load_dataset
    from negminer.encoders import build_encoder

    check_options(top_k, skip, margin, fmt)
    out = check_out(Path(out), quiet)
    ds = load_dataset(data)
    model = build_encoder(str(model_dir))
    texts = ds.target_inputs()
    lines, n = [], 0
    t0 = time.perf_counter()
    for qid, pos_rows, negs in mine(model, ds, split, top_k, margin, skip, progress=not quiet):
        qtext = ds.query_texts[ds.query_index[qid]]
        if fmt == "flag":
            lines.append(json.dumps({"query": qtext, "pos": [texts[r] for r in pos_rows], "neg": [texts[r] for r, _ in negs],
                                     "query_id": qid, "pos_ids": [ds.target_ids[r] for r in pos_rows],
                                     "neg_ids": [ds.target_ids[r] for r, _ in negs],
                                     "neg_scores": [round(v, 5) for _, v in negs]}) + "\n")
        elif len(negs) == top_k:  # fixed columns: queries with fewer candidates are left out
            for r in pos_rows:
                row = {"anchor": qtext, "positive": texts[r]}
                row.update({f"negative_{j + 1}": texts[c] for j, (c, _) in enumerate(negs)})
                lines.append(json.dumps(row) + "\n")
        else:
            continue
        n += 1  # queries written
    _save(out, atomic_write_text, "".join(lines))
    seconds = time.perf_counter() - t0  # encoding, search and writing; not loading the model or data
    _save(Path(f"{out}.meta.json"), atomic_write_json, {
        "model": str(model_dir), "data": str(data), "split": split, "top_k": top_k, "margin": margin, "skip": skip,
        "format": fmt, "queries": n, "targets": ds.num_targets, "seconds": round(seconds, 3)})
    if not quiet:
        print(f"mined {top_k} negatives for {n} queries of {ds.name}/{split} in {seconds:.1f} s -> {out} "
              f"(+ {Path(out).name}.meta.json)", file=sys.stderr)
    return 0


def check_options(top_k: int, skip: int, margin: float | None, fmt: str) -> None:
    if fmt not in ("flag", "st"):
        raise ConfigError(f"--format must be flag or st, not {fmt!r}")
    if top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {top_k}")
    if skip < 0:
        raise ConfigError(f"--skip must be >= 0, got {skip}")
    if margin is not None and not math.isfinite(margin):
        raise ConfigError(f"--margin must be a finite number, got {margin}")


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
