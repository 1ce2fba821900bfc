"""``negminer compare``: paired comparison of runs on the same queries.

Each argument is a run directory (or its ``per_query.jsonl``, gzipped or not), or several joined by commas (seeds
of one configuration: each query's metric is averaged over them). The first is the baseline; for
every other and every metric: both means, the mean per-query difference with its 95% confidence
interval (Student t over queries), and two-sided p-values of the paired t-test and the Wilcoxon
signed-rank test (scipy). Queries missing from a run count as errors, not zeros.

Example::  negminer compare runs/inbatch_s1,runs/inbatch_s2 runs/cache_s1,runs/cache_s2
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np

from negminer.errors import ConfigError, DataError
from negminer.eval.metrics import METRIC_KEYS

METRICS = METRIC_KEYS[:-1]


def read_per_query(path) -> dict[str, dict[str, float]]:
    p = Path(path)
    if p.is_dir():
        p = next((p / n for n in ("per_query.jsonl", "per_query.jsonl.gz") if (p / n).is_file()), p / "per_query.jsonl")
    if not p.is_file():
        raise ConfigError(f"{p}: no per-query metrics (a run directory evaluated by negminer >= 0.1 has them)")
    out = {}
    raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
    for no, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            out[str(rec["query_id"])] = {k: float(rec[k]) for k in METRICS}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DataError(p, f"bad per-query record ({type(e).__name__}: {e})", line=no) from None
    return out


def read_group(spec: str) -> dict[str, dict[str, float]]:
    """Per-query metrics averaged over the comma-separated runs of ``spec``."""
    runs = [read_per_query(x) for x in spec.split(",") if x]
    qids = set(runs[0])
    for r, name in zip(runs[1:], spec.split(",")[1:]):
        if set(r) != qids:
            raise ConfigError(f"{name}: evaluated on other queries than {spec.split(',')[0]}")
    return {q: {k: sum(r[q][k] for r in runs) / len(runs) for k in METRICS} for q in qids}


def paired(a: np.ndarray, b: np.ndarray) -> dict:
    from scipy import stats

    d = b - a
    n = len(d)
    mean, sd = float(d.mean()), float(d.std(ddof=1)) if n > 1 else 0.0
    half = float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)) if n > 1 else math.inf
    if sd == 0:
        p_t = p_w = 1.0 if mean == 0 else 0.0
    else:
        p_t = float(stats.ttest_rel(b, a).pvalue)
        p_w = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    return {"mean_a": float(a.mean()), "mean_b": float(b.mean()), "diff": mean, "ci95": [mean - half, mean + half],
            "p_ttest": p_t, "p_wilcoxon": p_w, "n": n}


def compare(specs: list[str], metrics=METRICS) -> list[dict]:
    if len(specs) < 2:
        raise ConfigError("compare needs at least two runs (the first is the baseline)")
    base = read_group(specs[0])
    rows = []
    for spec in specs[1:]:
        other = read_group(spec)
        if set(other) != set(base):
            raise ConfigError(f"{spec}: evaluated on other queries than {specs[0]} "
                              f"({len(set(other) ^ set(base))} differ)")
        qids = sorted(base)
        for k in metrics:
            a = np.array([base[q][k] for q in qids])
            b = np.array([other[q][k] for q in qids])
            rows.append({"a": specs[0], "b": spec, "metric": k, **paired(a, b)})
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'metric':<11}{'A':>8}{'B':>8}{'B - A':>9}  {'95% CI':<19}{'p (t)':>9}{'p (Wilcoxon)':>13}"]
    b = None
    for r in rows:
        if r["b"] != b:
            b = r["b"]
            lines.append(f"A = {r['a']}   B = {b}   ({r['n']} queries)")
        lo, hi = r["ci95"]
        lines.append(f"{r['metric']:<11}{r['mean_a']:>8.4f}{r['mean_b']:>8.4f}{r['diff']:>+9.4f}  "
                     f"[{lo:+.4f}, {hi:+.4f}]{r['p_ttest']:>9.2g}{r['p_wilcoxon']:>13.2g}")
    return "\n".join(lines)
