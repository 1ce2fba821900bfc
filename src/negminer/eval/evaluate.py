"""Encode corpus and queries, retrieve the top k, score against the qrels.

``model`` is anything with ``encode_queries(texts, batch_size=, progress=)`` and
``encode_targets(...)`` returning ``[n, d]`` tensors (negminer's DualEncoder, or an adapter);
the score is the dot product. Only queries of the split with at least one positive are searched.

    m = evaluate(model, dataset, split="test", out_dir="runs/x/eval")   # run.trec, per_query.jsonl, metrics.json
    m["ndcg@10"], m.stats["seconds_encode_targets"]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from negminer.errors import ConfigError
from negminer.eval.metrics import METRIC_KEYS, compute_metrics, trec_order
from negminer.eval.search import topk


class EvalMetrics(dict):
    """The metrics dict (keys exactly METRIC_KEYS; this is what metrics.json holds).

    ``.stats`` carries the work done, outside the dict: queries/targets encoded and seconds spent
    encoding, searching and scoring.
    """

    stats: dict


def retrieve(model, dataset, split: str = "test", k: int = 100, batch_size: int = 128, backend: str = "exact",
             progress: bool = False, stats: dict | None = None) -> dict[str, list[tuple[str, float]]]:
    """``{qid: [(target_id, score), ...]}`` in trec_eval's order (``trec_order``: best first, equal
    scores by target id descending), for the split's queries with a positive."""
    try:
        pos = dataset.positives(split)
    except KeyError as e:
        raise ConfigError(e.args[0]) from None
    qids = [q for q in dataset.query_ids if q in pos]
    qtexts = [dataset.query_texts[dataset.query_index[q]] for q in qids]
    stats = {} if stats is None else stats
    t0 = time.perf_counter()
    t_emb = torch.as_tensor(model.encode_targets(dataset.target_inputs(), batch_size=batch_size, progress=progress))
    t1 = time.perf_counter()
    q_emb = torch.as_tensor(model.encode_queries(qtexts, batch_size=batch_size, progress=progress))
    t2 = time.perf_counter()
    scores, idx = topk(q_emb.float(), t_emb.float(), k, backend=backend)
    scores, idx = scores.cpu().tolist(), idx.cpu().tolist()
    ids = dataset.target_ids
    run = {q: trec_order([(ids[i], s) for s, i in zip(scores[n], idx[n])]) for n, q in enumerate(qids)}
    stats.update(targets_encoded=len(t_emb), queries_encoded=len(q_emb), seconds_encode_targets=t1 - t0,
                 seconds_encode_queries=t2 - t1, seconds_search=time.perf_counter() - t2)
    return run


def evaluate(model, dataset, split: str = "test", k: int = 100, batch_size: int = 128, backend: str = "exact",
             progress: bool = False, out_dir=None) -> EvalMetrics:
    """Metrics dict with exactly METRIC_KEYS (work counters in ``.stats``).

    With ``out_dir``, also writes ``run.trec`` (top k per query) and ``metrics.json``, atomically.
    """
    start = time.perf_counter()
    stats: dict = {}
    run = retrieve(model, dataset, split, k, batch_size, backend, progress, stats)
    both = compute_metrics(run, dataset.qrels[split], per_query=True)
    metrics = EvalMetrics(both["mean"])
    if out_dir is not None:
        import json

        from negminer.eval.runfile import write_run
        from negminer.fileio import atomic_write_json, atomic_write_text

        out = Path(out_dir)
        write_run(out / "run.trec", run)
        atomic_write_text(out / "per_query.jsonl", "".join(
            json.dumps({"query_id": q, **m}) + "\n" for q, m in sorted(both["per_query"].items())))
        atomic_write_json(out / "metrics.json", dict(metrics))
    stats["seconds_total"] = time.perf_counter() - start
    metrics.stats = stats
    return metrics


def format_metrics(m: dict) -> str:
    """Two lines: metric names, then values (4 decimals)."""
    head = " ".join(f"{k:>11}" for k in METRIC_KEYS)
    vals = " ".join(f"{m[k]:>11.4f}" if k != "num_queries" else f"{m[k]:>11}" for k in METRIC_KEYS)
    return head + "\n" + vals


def eval_command(model_dir, data, split="test", out=None, backend="exact", batch_size=128, quiet=False) -> int:
    """``negminer eval``: load a saved model (or a model spec) and a dataset, print the metrics table.

    A folder with ``negminer.json`` loads with ``DualEncoder.load``; anything else goes through
    ``build_encoder`` (a sentence-transformers folder, a Hugging Face name). Returns the exit code.
    """
    from negminer.data.load import load_dataset
    from negminer.encoders import DualEncoder, build_encoder

    t = time.perf_counter()
    ds = load_dataset(data)
    if split not in ds.qrels:
        raise ConfigError(f"dataset {ds.name!r} has no split {split!r} (has {', '.join(ds.qrels) or 'none'})")
    is_saved = (Path(model_dir) / "negminer.json").is_file()
    model = DualEncoder.load(model_dir) if is_saved else build_encoder(str(model_dir))
    m = evaluate(model, ds, split=split, batch_size=batch_size, backend=backend, progress=not quiet, out_dir=out)
    print(format_metrics(m))
    if not quiet:
        print(f"{ds.name} / {split}: {m['num_queries']} queries, {ds.num_targets} targets, "
              f"{time.perf_counter() - t:.1f}s" + (f"; wrote {out}/run.trec and metrics.json" if out else ""),
              file=sys.stderr)
    return 0
