"""Extreme multi-label metrics: P@k, nDCG@k and propensity-scored PSP@k, as the Extreme Classification
Repository (and napkinxc.metrics) define them.

For a query with true labels T and predicted labels p_1, p_2, ... (best first):

    P@k    = |{p_1..p_k} ∩ T| / k
    nDCG@k = sum_{i<=k, p_i in T} 1 / log2(i + 1)  /  sum_{i <= min(k, |T|)} 1 / log2(i + 1)   (0 if T is empty)
    PSP@k  = sum_q sum_{i<=k, p_i in T} q_{p_i} / k  /  sum_q sum_{i <= min(k, |T|)} (q of T, largest first)_i / k

P@k and nDCG@k are means over queries (a query without labels counts, scoring 0); PSP@k is
normalised over the whole set by the best achievable value. Inverse propensities (Jain, Prabhu,
Varma, KDD 2016) from the training labels: q_l = 1 + C (N_l + B)^-A, C = (ln N - 1)(B + 1)^A, with N
training points, N_l of them labelled l, and A, B per dataset (0.55 / 1.5 by default; 0.6 / 2.6 for
Amazon-670K and Amazon-3M; 0.5 / 0.4 for WikiLSHTC-325K and WikipediaLarge-500K).

    q = inverse_propensity(train_label_sets, num_labels)
    xmc_metrics(predicted_label_lists, true_label_sets, q)   # {"p@1": ..., "ndcg@5": ..., "psp@5": ...}
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np


def inverse_propensity(labels: Sequence[Iterable[int]], num_labels: int, a: float = 0.55, b: float = 1.5) -> np.ndarray:
    """[num_labels] inverse propensities q_l from the training points' label sets."""
    counts = np.zeros(num_labels)
    for ls in labels:
        counts[list(ls)] += 1
    c = (math.log(len(labels)) - 1) * (b + 1) ** a
    return 1 + c * (counts + b) ** -a


def xmc_metrics(pred: Sequence[Sequence[int]], true: Sequence[Iterable[int]], inv_ps: np.ndarray | None = None,
                ks: Sequence[int] = (1, 3, 5)) -> dict[str, float]:
    """P@k, nDCG@k (and PSP@k with ``inv_ps``) for k in ``ks``; ``pred[i]``: labels best first."""
    if len(pred) != len(true):
        raise ValueError(f"xmc_metrics: {len(pred)} predictions for {len(true)} queries")
    kmax, n = max(ks), len(true)
    hits = np.zeros((n, kmax))
    sizes = np.zeros(n, dtype=int)
    gain = np.zeros((n, kmax))   # q of the hit labels at their rank
    best = np.zeros((n, kmax))   # the query's largest q, sorted
    for i, (p, t) in enumerate(zip(pred, true)):
        t = set(t)
        sizes[i] = len(t)
        top = list(p)[:kmax]
        hits[i, :len(top)] = [x in t for x in top]
        if inv_ps is not None:
            gain[i, :len(top)] = [inv_ps[x] if x in t else 0.0 for x in top]
            q = np.sort(inv_ps[list(t)])[::-1][:kmax] if t else np.zeros(0)
            best[i, :len(q)] = q
    disc = 1 / np.log2(np.arange(2, kmax + 2))
    out: dict[str, float] = {}
    for k in ks:
        out[f"p@{k}"] = float(hits[:, :k].sum(1).mean() / k)
        ideal = np.cumsum(disc)[np.minimum(sizes, k) - 1]
        dcg = (hits[:, :k] * disc[:k]).sum(1)
        out[f"ndcg@{k}"] = float(np.where(sizes > 0, dcg / np.where(sizes > 0, ideal, 1), 0.0).mean())
        if inv_ps is not None:
            denom = best[:, :k].sum()
            out[f"psp@{k}"] = float(gain[:, :k].sum() / denom) if denom > 0 else 0.0
    return out
