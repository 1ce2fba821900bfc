"""``negminer data check``: statistics of a dataset (loading it already validated it)."""

from __future__ import annotations

import numpy as np

from negminer.data.dataset import Dataset
from negminer.data.splits import requirements

SAMPLE = 200_000  # text-length statistics over at most this many rows (evenly spaced)


def _lengths(texts) -> dict:
    n = len(texts)
    idx = range(n) if n <= SAMPLE else np.linspace(0, n - 1, SAMPLE).astype(int)
    sample = [texts[i] for i in idx]  # lazy (synthetic) texts are made once
    chars = np.array([len(t) for t in sample])
    words = np.array([len(t.split()) for t in sample])
    out = {}
    for name, a in (("chars", chars), ("words", words)):
        out[name] = {"mean": round(float(a.mean()), 1), "median": float(np.median(a)),
                     "p95": float(np.percentile(a, 95)), "max": int(a.max())} if len(a) else {}
    return out


def dataset_stats(ds: Dataset) -> dict:
    splits = {}
    for split, judged in ds.qrels.items():
        pos = ds.positives(split)
        counts = np.array([len(v) for v in pos.values()]) if pos else np.zeros(1)
        splits[split] = {"queries_judged": len(judged), "queries_with_positives": len(pos),
                         "judged_pairs": sum(len(v) for v in judged.values()),
                         "positives_per_query": {"mean": round(float(counts.mean()), 2), "min": int(counts.min()),
                                                 "max": int(counts.max())}}
    return {"name": ds.name, "source": ds.source, "targets": ds.num_targets, "queries": len(ds.query_ids),
            "splits": splits, "target_length": _lengths(ds.target_inputs()), "query_length": _lengths(ds.query_texts),
            "given_negatives": sum(len(v) for v in ds.hard_negatives.values()),
            "train_needs": [{"for": what, "split": split, "problem": problem}
                            for what, split, problem in requirements(ds, selects=True)]}  # dev: with --eval-every


def format_stats(s: dict) -> str:
    lines = [f"dataset {s['name']}  ({s['source']})", f"targets {s['targets']:,}   queries {s['queries']:,}", "",
             f"{'split':<12}{'queries':>10}{'pairs':>10}{'pos/query':>11}{'min':>6}{'max':>6}"]
    for name, v in s["splits"].items():
        p = v["positives_per_query"]
        lines.append(f"{name:<12}{v['queries_with_positives']:>10,}{v['judged_pairs']:>10,}{p['mean']:>11}"
                     f"{p['min']:>6}{p['max']:>6}")
    lines += ["", f"{'length':<16}{'mean':>8}{'median':>8}{'p95':>8}{'max':>8}"]
    for who in ("target", "query"):
        for unit, v in s[f"{who}_length"].items():
            if v:
                lines.append(f"{who + ' ' + unit:<16}{v['mean']:>8}{v['median']:>8.0f}{v['p95']:>8.0f}{v['max']:>8}")
    if s["given_negatives"]:
        lines.append(f"\nnegatives given by the data: {s['given_negatives']:,}")
    lines += ["", "negminer train (default splits) needs:"]
    for n in s["train_needs"]:
        lines.append(f"  {n['for'] + ':':<32}{n['split']}: {'ok' if n['problem'] is None else n['problem']}")
    return "\n".join(lines)
