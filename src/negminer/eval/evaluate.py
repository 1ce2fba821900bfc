"""Encode corpus and queries, retrieve the top k, score against the qrels.

``model`` is anything with ``encode_queries(texts, batch_size=, progress=)`` and
``encode_targets(...)`` returning ``[n, d]`` tensors (negminer's DualEncoder, or an adapter);
the score is the dot product. Only queries of the split with at least one positive are searched.

    m = evaluate(model, dataset, split="test", out_dir="runs/x/eval")   # run.trec, per_query.jsonl, metrics.json
    m["ndcg@10"], m.stats["seconds_encode_targets"]

Multi-label data (``dataset.is_multilabel()``: an Extreme Classification Repository layout, or a query with
several positives) also gets the XMC metrics of ``eval/xmc.py`` under ``XMC_KEYS`` ("xmc_p@1" ...
"xmc_psp@5", "xmc_queries"; the prefix keeps them apart from the ``p@1`` / ``p@5`` above), as the
repository (http://manikvarma.org/downloads/XC/XMLRepository.html) computes them: predictions are the top
k best first, the split's ``filter_pairs`` are removed from predictions and truth, and the means run over
every query of ``qrels[split]``, so a query left without positives (by the filter or the data) counts and
scores 0. Inverse propensities come from the positives of the ``train`` split (of the evaluated split
when there is none) with A, B from ``PROPENSITY`` by dataset name (0.55, 1.5 otherwise), or ``propensity``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from negminer.errors import ConfigError
from negminer.eval.metrics import METRIC_KEYS, compute_metrics, trec_order
from negminer.eval.search import topk
from negminer.eval.xmc import inverse_propensity, xmc_metrics

XMC_KEYS = ("xmc_p@1", "xmc_p@3", "xmc_p@5", "xmc_ndcg@1", "xmc_ndcg@3", "xmc_ndcg@5",
            "xmc_psp@1", "xmc_psp@3", "xmc_psp@5", "xmc_queries")
PROPENSITY = {  # (A, B) of Jain et al.'s inverse propensities by dataset name (case-insensitive)
    **dict.fromkeys(("amazon-670k", "amazon-3m", "amazontitles-3m", "lf-amazontitles-1.3m"), (0.6, 2.6)),
    **dict.fromkeys(("wikilshtc-325k", "wikipedia-500k", "wikipedialarge-500k", "lf-wikipedia-500k", "wikiseealso",
                     "lf-wikiseealso-320k", "lf-wikiseealsotitles-320k", "wikiseealsotitles-350k"), (0.5, 0.4)),
}
DEFAULT_PROPENSITY = (0.55, 1.5)


class EvalMetrics(dict):
    """The metrics dict (keys exactly METRIC_KEYS, then XMC_KEYS for multi-label data; this is what
    metrics.json holds).

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
    search = lambda q, t, n: topk(q, t, n, backend=backend)  # noqa: E731
    if hasattr(model, "search"):  # under torchrun: each rank searches its share of the queries (dist.Sharded)
        scores, idx = model.search(search, q_emb.float(), t_emb.float(), k)
    else:
        scores, idx = search(q_emb.float(), t_emb.float(), k)
    scores, idx = scores.cpu().tolist(), idx.cpu().tolist()
    ids = dataset.target_ids
    run = {q: trec_order([(ids[i], s) for s, i in zip(scores[n], idx[n])]) for n, q in enumerate(qids)}
    stats.update(targets_encoded=len(t_emb), queries_encoded=len(q_emb), seconds_encode_targets=t1 - t0,
                 seconds_encode_queries=t2 - t1, seconds_search=time.perf_counter() - t2)
    return run


def propensity_for(name: str) -> tuple[float, float]:
    """(A, B) for a dataset name: the repository's values for its datasets, else (0.55, 1.5)."""
    return PROPENSITY.get(name.strip().lower(), DEFAULT_PROPENSITY)


def parse_propensity(text: str) -> tuple[float, float]:
    """``"A,B"`` (the ``--propensity`` flag) -> (A, B)."""
    try:
        a, b = (float(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"--propensity expects A,B (two numbers, e.g. 0.55,1.5), got {text!r}") from None
    if not (a > 0 and b >= 0):
        raise ConfigError(f"--propensity expects A > 0 and B >= 0, got {text!r}")
    return a, b


def xmc_scores(run: dict, dataset, split: str, propensity: tuple[float, float] | None = None) -> dict:
    """XMC_KEYS for ``run`` (``retrieve``'s output), filter pairs removed; see the module docstring."""
    a, b = propensity or propensity_for(dataset.name)
    drop, rows = dataset.filter_pairs.get(split, set()), dataset.target_index
    pred, true = [], []
    for qid, judged in dataset.qrels[split].items():
        true.append([rows[t] for t, g in judged.items() if g > 0 and (qid, t) not in drop])
        pred.append([rows[t] for t, _ in run.get(qid, []) if (qid, t) not in drop])
    train = dataset.qrels.get("train") or dataset.qrels[split]
    inv_ps = inverse_propensity([[rows[t] for t, g in judged.items() if g > 0] for judged in train.values()],
                                dataset.num_targets, a, b)
    out = {f"xmc_{name}": v for name, v in xmc_metrics(pred, true, inv_ps, (1, 3, 5)).items()}
    return {**{key: out[key] for key in XMC_KEYS[:-1]}, "xmc_queries": len(true)}


def evaluate(model, dataset, split: str = "test", k: int = 100, batch_size: int = 128, backend: str = "exact",
             progress: bool = False, out_dir=None, propensity: tuple[float, float] | None = None) -> EvalMetrics:
    """Metrics dict with exactly METRIC_KEYS, plus XMC_KEYS for multi-label data (work counters in ``.stats``).

    With ``out_dir``, also writes ``run.trec`` (top k per query) and ``metrics.json``, atomically.
    """
    start = time.perf_counter()
    stats: dict = {}
    run = retrieve(model, dataset, split, k, batch_size, backend, progress, stats)
    both = compute_metrics(run, dataset.qrels[split], per_query=True)
    metrics = EvalMetrics(both["mean"])
    if dataset.is_multilabel():
        metrics.update(xmc_scores(run, dataset, split, propensity))
        stats["propensity"] = propensity or propensity_for(dataset.name)
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
    """Two lines: metric names, then values (4 decimals); two more for the XMC metrics when present."""
    out = []
    for keys in (METRIC_KEYS, XMC_KEYS) if XMC_KEYS[0] in m else (METRIC_KEYS,):
        out.append(" ".join(f"{k:>11}" for k in keys))
        out.append(" ".join(f"{m[k]:>11}" if k in ("num_queries", "xmc_queries") else f"{m[k]:>11.4f}" for k in keys))
    return "\n".join(out)


def evaluate_saved(model_dir, data, split="test", out=None, backend="exact", batch_size=128, quiet=False,
                   propensity: str | None = None) -> dict:
    """Load a saved model (or a model spec) and a dataset; its metrics on ``split`` (``.stats`` attached).

    A folder written by negminer (``RUN/model``, ``RUN/model-last``, ``RUN/checkpoint``, ``RUN``) loads with
    ``encoders.load_saved``; anything else goes through ``build_encoder`` (a sentence-transformers folder, a
    Hugging Face name). ``propensity``: "A,B" for the PSP@k inverse propensities of multi-label data (default:
    by dataset name)."""
    from negminer.data.load import load_dataset
    from negminer.encoders import build_encoder, load_saved

    ab = parse_propensity(propensity) if propensity is not None else None
    ds = load_dataset(data)
    if split not in ds.qrels:
        raise ConfigError(f"dataset {ds.name!r} has no split {split!r} (has {', '.join(ds.qrels) or 'none'})")
    model = load_saved(model_dir) or build_encoder(str(model_dir))  # model/, a checkpoint, a run, or a spec
    m = evaluate(model, ds, split=split, batch_size=batch_size, backend=backend, progress=not quiet, out_dir=out,
                 propensity=ab)
    m.stats["dataset"] = (ds.name, ds.num_targets)
    return m


def eval_command(model_dir, data, split="test", out=None, backend="exact", batch_size=128, quiet=False,
                 propensity: str | None = None) -> int:
    """``negminer eval``: ``evaluate_saved`` and the metrics table. Returns the exit code."""
    t = time.perf_counter()
    m = evaluate_saved(model_dir, data, split=split, out=out, backend=backend, batch_size=batch_size, quiet=quiet,
                       propensity=propensity)
    print(format_metrics(m))
    if not quiet:
        name, n = m.stats["dataset"]
        print(f"{name} / {split}: {m['num_queries']} queries, {n} targets, "
              f"{time.perf_counter() - t:.1f}s" + (f"; wrote {out}/run.trec and metrics.json" if out else "")
              + ("; PSP@k with A={}, B={}".format(*m.stats["propensity"]) if "propensity" in m.stats else ""),
              file=sys.stderr)
    return 0
