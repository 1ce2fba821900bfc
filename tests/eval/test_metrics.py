"""Our metrics agree with ir-measures (trec_eval definitions) to 1e-6."""

import random

import pytest

from negminer.eval.metrics import METRIC_KEYS, compute_metrics

ir_measures = pytest.importorskip("ir_measures")
from ir_measures import RR, P, R, nDCG  # noqa: E402

MEASURES = {"recall@1": R @ 1, "recall@10": R @ 10, "recall@100": R @ 100, "mrr@10": RR @ 10,
            "ndcg@10": nDCG @ 10, "p@1": P @ 1, "p@5": P @ 5}


def random_case(seed=0, n_q=60, n_docs=400):
    """Graded multi-positive qrels with zero grades; some queries missing from the run; distinct scores."""
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(n_docs)]
    qrels, run = {}, {}
    for q in range(n_q):
        qid = f"q{q}"
        judged = rng.sample(docs, rng.randint(1, 14))
        qrels[qid] = {d: rng.choice([0, 1, 1, 2, 3]) for d in judged}
        qrels[qid][judged[0]] = rng.choice([1, 2, 3])  # at least one relevant
        if q % 10 == 0:
            continue  # a query missing from the run
        ranked = rng.sample(docs, 100)
        for d in judged:  # plant judged targets (relevant and zero-grade) near the top
            if d not in ranked and rng.random() < 0.7:
                ranked[rng.randint(0, 30)] = d
        scores = sorted(rng.sample(range(10**6), 100), reverse=True)  # distinct: no ties
        run[qid] = [(d, s / 1000.0) for d, s in zip(ranked, scores)]
    qrels["q_no_rel"] = {"d1": 0, "d2": 0}  # judged, nothing relevant: not evaluated
    run["q_no_rel"] = [("d1", 1.0)]
    return qrels, run


def ir_measures_per_query(qrels, run):
    rel_qrels = {q: j for q, j in qrels.items() if any(g > 0 for g in j.values())}
    ir_run = {q: {d: s for d, s in ranked} for q, ranked in run.items() if q in rel_qrels}
    per = {key: {q: 0.0 for q in rel_qrels} for key in MEASURES}  # a query without a run scores 0
    by_measure = {m: k for k, m in MEASURES.items()}
    for r in ir_measures.iter_calc(list(MEASURES.values()), rel_qrels, ir_run):
        per[by_measure[r.measure]][r.query_id] = r.value
    return per


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_ir_measures(seed):
    qrels, run = random_case(seed)
    ours = compute_metrics(run, qrels)
    assert list(ours) == list(METRIC_KEYS)
    per = ir_measures_per_query(qrels, run)
    assert ours["num_queries"] == 60
    for key in MEASURES:
        want = sum(per[key].values()) / len(per[key])
        assert abs(ours[key] - want) < 1e-6, (key, ours[key], want)
    assert 0 < ours["ndcg@10"] < 1 and 0 < ours["recall@100"] < 1  # the case is not degenerate


def test_per_query_matches_ir_measures():
    qrels, run = random_case(3)
    out = compute_metrics(run, qrels, per_query=True)
    assert out["mean"] == compute_metrics(run, qrels)
    per = ir_measures_per_query(qrels, run)
    assert set(out["per_query"]) == set(per["ndcg@10"])
    assert "q_no_rel" not in out["per_query"]
    for q, m in out["per_query"].items():
        for key in MEASURES:
            assert abs(m[key] - per[key][q]) < 1e-6, (q, key)


def test_hand_computed_values():
    qrels = {"a": {"x": 2, "y": 1, "n": 0}, "b": {"z": 1}}
    run = {"a": [("n", 3.0), ("y", 2.0), ("q", 1.5), ("x", 1.0)], "b": [("z", 1.0)]}
    m = compute_metrics(run, qrels, per_query=True)["per_query"]
    assert m["a"]["recall@1"] == 0 and m["a"]["recall@10"] == 1 and m["a"]["mrr@10"] == 0.5
    dcg, idcg = 1 / 1.584962500721156 + 2 / 2.321928094887362, 2 + 1 / 1.584962500721156
    assert m["a"]["ndcg@10"] == pytest.approx(dcg / idcg) and m["a"]["p@5"] == pytest.approx(2 / 5)
    assert m["b"]["ndcg@10"] == pytest.approx(1.0) and m["b"]["p@1"] == 1.0


def test_run_order_is_ignored():
    """Targets are re-ranked by score (ties: see test_ties.py), whatever order the run lists them in."""
    qrels = {"a": {"x": 1}}
    assert compute_metrics({"a": [("y", 1.0), ("x", 2.0)]}, qrels)["mrr@10"] == 1.0
    assert compute_metrics({"a": [("x", 1.0), ("y", 1.0)]}, qrels)["p@1"] == 0.0  # y before x on a tie
    assert compute_metrics({"a": [("y", 1.0), ("x", 1.0)]}, qrels)["p@1"] == 0.0


def test_empty_run_and_no_relevant_queries():
    qrels = {"a": {"x": 2, "y": 1}, "b": {"z": 1}}
    empty = compute_metrics({}, qrels)
    assert all(empty[k] == 0.0 for k in METRIC_KEYS[:-1]) and empty["num_queries"] == 2
    none = compute_metrics({"a": [("x", 1.0)]}, {"a": {"x": 0}})
    assert none["num_queries"] == 0 and none["ndcg@10"] == 0.0
