"""Retrieval metrics, defined as trec_eval / ir-measures define them, ties included.

For each query with at least one relevant target (grade > 0), over the ranked run (best first):
  recall@k = |relevant in top k| / |relevant|      p@k = |relevant in top k| / k
  mrr@10   = 1 / rank of the first relevant target in the top 10 (0 if none)
  ndcg@10  = DCG@10 / IDCG@10 with DCG = sum_i grade_i / log2(i + 1) (linear gains, as trec_eval);
             IDCG from all judged relevant targets sorted by grade.
Values are means over those queries; a query missing from the run scores 0 on every metric, and
queries whose judgements are all <= 0 are left out (not counted in ``num_queries``).

Ranking, as ir-measures ranks: the run's order is ignored; targets are sorted by score, descending,
equal scores by target id (string order) descending as trec_eval does (``trec_order``; ir-measures
uses pytrec_eval for R, P, nDCG), except for mrr@10: ascending ids there (``msmarco_order``;
ir-measures computes RR@10 with the MS MARCO script). Run files are written in ``trec_order``.

    compute_metrics({"q1": [("d3", 0.9), ("d1", 0.5)]}, {"q1": {"d1": 2, "d7": 0}})
    compute_metrics(run, qrels, per_query=True)  # {"mean": {...}, "per_query": {qid: {...}}}
"""

from __future__ import annotations

import math

METRIC_KEYS = ("recall@1", "recall@10", "recall@100", "mrr@10", "ndcg@10", "p@1", "p@5", "num_queries")


def trec_order(ranked: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """trec_eval's ranking: score descending, equal scores by target id descending."""
    return sorted(ranked, key=lambda p: (p[1], p[0]), reverse=True)


def msmarco_order(ranked: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """MS MARCO's (ir-measures' RR@k): score descending, equal scores by target id ascending."""
    return sorted(ranked, key=lambda p: (-p[1], p[0]))


def query_metrics(ranked: list[tuple[str, float]], judged: dict[str, int]) -> dict[str, float]:
    """One query's metrics; ``ranked`` holds ``(target_id, score)`` in any order."""
    rel = {t: g for t, g in judged.items() if g > 0}
    ids = [t for t, _ in trec_order(ranked)]
    hits = [1 if t in rel else 0 for t in ids]
    out = {}
    for k in (1, 10, 100):
        out[f"recall@{k}"] = sum(hits[:k]) / len(rel)
    first = next((i for i, (t, _) in enumerate(msmarco_order(ranked)[:10]) if t in rel), None)
    out["mrr@10"] = 0.0 if first is None else 1.0 / (first + 1)
    dcg = sum(rel.get(t, 0) / math.log2(i + 2) for i, t in enumerate(ids[:10]))
    ideal = sorted(rel.values(), reverse=True)[:10]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    out["ndcg@10"] = dcg / idcg
    out["p@1"] = sum(hits[:1]) / 1
    out["p@5"] = sum(hits[:5]) / 5
    return out


def compute_metrics(run: dict[str, list[tuple[str, float]]], qrels: dict[str, dict[str, int]],
                    per_query: bool = False) -> dict:
    """Mean metrics over the queries of ``qrels`` that have a relevant target (keys: METRIC_KEYS).

    ``run[qid]`` holds ``(target_id, score)`` pairs, re-ranked as above. With ``per_query``, returns
    ``{"mean": <that dict>, "per_query": {qid: {metric: value}}}`` instead.
    """
    per = {}
    for qid, judged in qrels.items():
        if not any(g > 0 for g in judged.values()):
            continue
        per[qid] = query_metrics(run.get(qid, []), judged)
    n = len(per)
    out = {k: (sum(m[k] for m in per.values()) / n if n else 0.0) for k in METRIC_KEYS[:-1]}
    out["num_queries"] = n
    if per_query:
        out = {"mean": out, "per_query": per}
    return out
