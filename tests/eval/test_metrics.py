"""Our metrics agree with ir-measures (trec_eval definitions) to 1e-6."""

import random

import pytest

from negminer.eval.metrics import METRIC_KEYS, compute_metrics

ir_measures = pytest.importorskip("ir_measures")


def random_case(seed=0, n_q=60, n_docs=400):
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(n_docs)]
    qrels, run = {}, {}
    for q in range(n_q):
        qid = f"q{q}"
        judged = rng.sample(docs, rng.randint(1, 12))
        qrels[qid] = {d: rng.choice([0, 1, 1, 2, 3]) for d in judged}
        if q % 10 == 0:
            continue  # a query missing from the run
        ranked = rng.sample(docs, 100)
        scores = sorted(rng.sample(range(10**6), 100), reverse=True)  # distinct: no ties
        run[qid] = [(d, s / 1000.0) for d, s in zip(ranked, scores)]
        for d in rng.sample([d for d, g in qrels[qid].items() if g > 0] or judged, 1):  # plant some hits
            if d not in dict(run[qid]):
                pos = rng.randint(0, 20)
                run[qid][pos] = (d, run[qid][pos][1])
    qrels["q_no_rel"] = {"d1": 0}
    return qrels, run


def test_metrics_match_ir_measures():
    qrels, run = random_case()
    ours = compute_metrics(run, qrels)
    from ir_measures import P, RR, R, nDCG

    names = {"recall@1": R @ 1, "recall@10": R @ 10, "recall@100": R @ 100, "mrr@10": RR @ 10,
             "ndcg@10": nDCG @ 10, "p@1": P @ 1, "p@5": P @ 5}
    rel_qrels = {q: j for q, j in qrels.items() if any(g > 0 for g in j.values())}
    # ir-measures averages over queries in the run; queries without a run score 0 for us: add empty rows
    ir_run = {q: {d: s for d, s in run.get(q, [])} for q in rel_qrels}
    for q in ir_run:
        if not ir_run[q]:
            ir_run[q] = {"__none__": 0.0}
    per = {m: {} for m in names.values()}
    for r in ir_measures.iter_calc(list(names.values()), rel_qrels, ir_run):
        per[r.measure][r.query_id] = r.value
    for key, measure in names.items():
        want = sum(per[measure].get(q, 0.0) for q in rel_qrels) / len(rel_qrels)
        assert abs(ours[key] - want) < 1e-6, (key, ours[key], want)
    assert ours["num_queries"] == len(rel_qrels) == 60
    assert list(ours) == list(METRIC_KEYS)


def test_perfect_and_empty_runs():
    qrels = {"a": {"x": 2, "y": 1}, "b": {"z": 1}}
    perfect = compute_metrics({"a": [("x", 2.0), ("y", 1.0)], "b": [("z", 1.0)]}, qrels)
    assert perfect["ndcg@10"] == pytest.approx(1.0) and perfect["recall@1"] == pytest.approx(0.75)
    assert perfect["p@5"] == pytest.approx((2 / 5 + 1 / 5) / 2)
    assert compute_metrics({}, qrels)["mrr@10"] == 0.0
