"""Encode corpus and queries, retrieve the top 100, score against the qrels."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from negminer.eval.metrics import METRIC_KEYS, compute_metrics
from negminer.eval.search import topk


def retrieve(model, dataset, split: str = "test", k: int = 100, batch_size: int = 128, backend: str = "exact",
             progress: bool = False) -> dict[str, list[tuple[str, float]]]:
    pos = dataset.positives(split)
    qids = [q for q in dataset.query_ids if q in pos]
    qtexts = [dataset.query_texts[dataset.query_index[q]] for q in qids]
    t_emb = model.encode_targets(dataset.target_inputs(), batch_size=batch_size, progress=progress)
    q_emb = model.encode_queries(qtexts, batch_size=batch_size, progress=progress)
    scores, idx = topk(q_emb, t_emb, k, backend=backend)
    ids = dataset.target_ids
    return {q: [(ids[int(i)], float(s)) for s, i in zip(scores[n], idx[n])] for n, q in enumerate(qids)}


def evaluate(model, dataset, split: str = "test", k: int = 100, batch_size: int = 128, backend: str = "exact",
             progress: bool = False, out_dir=None) -> dict:
    """Metrics dict with exactly METRIC_KEYS; with ``out_dir``, also writes run.trec and metrics.json."""
    run = retrieve(model, dataset, split, k, batch_size, backend, progress)
    metrics = compute_metrics(run, dataset.qrels[split])
    if out_dir is not None:
        from negminer.eval.runfile import write_run
        from negminer.train.io import atomic_write_json

        out = Path(out_dir)
        write_run(out / "run.trec", run)
        atomic_write_json(out / "metrics.json", metrics)
    return metrics


def format_metrics(m: dict) -> str:
    head = "".join(f"{k:>11}" for k in METRIC_KEYS)
    vals = "".join(f"{m[k]:>11.4f}" if k != "num_queries" else f"{m[k]:>11}" for k in METRIC_KEYS)
    return head + "\n" + vals


def eval_command(model_dir, data, split="test", out=None, backend="exact", batch_size=128, quiet=False) -> int:
    from negminer.data.load import load_dataset
    from negminer.encoders import DualEncoder, build_encoder

    t = time.perf_counter()
    ds = load_dataset(data)
    model = DualEncoder.load(model_dir) if (Path(model_dir) / "negminer.json").is_file() else build_encoder(str(model_dir))
    m = evaluate(model, ds, split=split, batch_size=batch_size, backend=backend, progress=not quiet, out_dir=out)
    print(format_metrics(m))
    if not quiet:
        print(f"{ds.name} / {split}: {m['num_queries']} queries, {ds.num_targets} targets, "
              f"{time.perf_counter() - t:.1f}s" + (f"; wrote {out}/run.trec and metrics.json" if out else ""),
              file=sys.stderr)
    return 0
