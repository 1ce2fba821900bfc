"""Tied scores: metrics, run.trec and ir-measures (read from that file) agree exactly."""

import json
import random
import re

import pytest
import torch

from negminer.eval.evaluate import evaluate, retrieve
from negminer.eval.metrics import METRIC_KEYS, compute_metrics, trec_order
from negminer.eval.runfile import read_run, write_run

ir_measures = pytest.importorskip("ir_measures")
from ir_measures import RR, P, R, nDCG  # noqa: E402

MEASURES = {"recall@1": R @ 1, "recall@10": R @ 10, "recall@100": R @ 100, "mrr@10": RR @ 10,
            "ndcg@10": nDCG @ 10, "p@1": P @ 1, "p@5": P @ 5}
KEYS = list(MEASURES)


def tied_case(seed=0, n_q=40):
    """Graded multi-positive qrels; runs with heavy ties (few distinct scores), shuffled so the given
    order is not trec_eval's; ids like d1 < d10 < d2 (string order); some queries missing from the run."""
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(150)]
    levels = [float(torch.tensor(v, dtype=torch.float32)) for v in (0.9, 0.7, 0.7 + 3e-7, 0.3, 0.1)]
    qrels = {"qa": {"d2": 1, "d9": 0}, "qb": {d: 1 + i % 3 for i, d in enumerate(docs[5:25:3])}}
    run = {"qa": [("d2", 1.0), ("d9", 1.0), ("d3", 0.5)],  # relevant tied with non-relevant at ranks 1-2
           "qb": [(d, levels[1] if 3 <= i < 30 else levels[0] if i < 3 else levels[3])  # tie over ranks 4-30
                  for i, d in enumerate(docs[:100])]}
    for q in range(n_q):
        ranked = rng.sample(docs, rng.choice([5, 12, 100]))
        qrels[f"q{q}"] = {d: rng.choice([0, 1, 2, 3]) for d in rng.sample(ranked[:15], 4) + rng.sample(docs, 2)}
        qrels[f"q{q}"][ranked[0]] = rng.choice([1, 2])
        if q % 9 != 4:
            run[f"q{q}"] = [(d, rng.choice(levels)) for d in ranked]
    for ranked in run.values():
        rng.shuffle(ranked)
    return qrels, run


def ir_per_query(qrels, run):
    """{metric: {qid: value}} from ir-measures; ``run`` is a run-file path or a run dict."""
    if not isinstance(run, dict):
        run = list(ir_measures.read_trec_run(str(run)))
    per = {k: {} for k in KEYS}
    by = {m: k for k, m in MEASURES.items()}
    for r in ir_measures.iter_calc(list(MEASURES.values()), qrels, run):
        per[by[r.measure]][r.query_id] = r.value
    return per


def assert_same(ours_per_query, per):
    for key in KEYS:
        assert set(per[key]) == set(ours_per_query)
        for q, v in per[key].items():
            assert abs(ours_per_query[q][key] - v) < 1e-9, (q, key, ours_per_query[q][key], v)


@pytest.mark.parametrize("seed", [0, 1])
def test_tied_run_matches_ir_measures_on_the_written_file(seed, tmp_path):
    qrels, run = tied_case(seed)
    ours = compute_metrics(run, qrels, per_query=True)
    write_run(tmp_path / "run.trec", run)
    per = ir_per_query(qrels, tmp_path / "run.trec")
    assert_same(ours["per_query"], per)
    assert_same(ours["per_query"], ir_per_query(qrels, {q: dict(r) for q, r in run.items()}))
    agg = ir_measures.calc_aggregate(list(MEASURES.values()), qrels, list(ir_measures.read_trec_run(
        str(tmp_path / "run.trec"))))
    for key, m in MEASURES.items():
        assert abs(ours["mean"][key] - agg[m]) < 1e-9, key
    qa = ours["per_query"]["qa"]
    assert qa["p@1"] == 0.0 and qa["recall@1"] == 0.0 and qa["mrr@10"] == 1.0  # see test_tie_break_rules

    # power: the run's given order (old behaviour) or 6-decimal scores (old format) disagree
    given = compute_metrics({q: [(t, -i) for i, (t, _) in enumerate(r)] for q, r in run.items()}, qrels)
    assert any(abs(given[k] - agg[m]) > 1e-3 for k, m in MEASURES.items())
    (tmp_path / "old.trec").write_text("".join(f"{q} Q0 {t} {n} {s:.6f} x\n" for q, r in run.items()
                                               for n, (t, s) in enumerate(trec_order(r), 1)))
    old = ir_per_query(qrels, tmp_path / "old.trec")
    assert any(abs(old[k][q] - ours["per_query"][q][k]) > 1e-3 for k in KEYS for q in old[k])


def test_tie_break_rules():
    """What ir-measures does on a tie: trec_eval's order (id descending) for R, P, nDCG (pytrec_eval);
    MS MARCO's (id ascending) for RR@10."""
    qrels = {"q": {"d2": 1, "d9": 0}}
    for ranked in ([("d2", 1.0), ("d9", 1.0)], [("d9", 1.0), ("d2", 1.0)]):
        ours = compute_metrics({"q": ranked}, qrels)
        ir = ir_measures.calc_aggregate(list(MEASURES.values()), qrels, {"q": dict(ranked)})
        assert ours["p@1"] == ir[P @ 1] == 0.0 and ours["mrr@10"] == ir[RR @ 10] == 1.0
        assert ours["ndcg@10"] == pytest.approx(ir[nDCG @ 10]) == pytest.approx(1 / 1.584962500721156)
    assert trec_order([("d1", 0.5), ("d10", 0.5), ("d2", 0.5), ("d0", 0.7)]) == [
        ("d0", 0.7), ("d2", 0.5), ("d10", 0.5), ("d1", 0.5)]


def test_write_read_round_trips_exact_floats(tmp_path):
    g = torch.Generator().manual_seed(0)
    vals = (torch.randn(300, generator=g) * 10.0 ** torch.randint(-8, 8, (300,), generator=g)).tolist()
    vals += [0.0, -0.0, 1.0, 0.1, 1e-300, 1 / 3, float(torch.tensor(1 / 3)), 2.0 ** -30]
    run = {"q1": [(f"d{i}", s) for i, s in enumerate(vals)], "q2": [("a", 0.5), ("b", 0.5)]}
    write_run(tmp_path / "run.trec", run)
    back = read_run(tmp_path / "run.trec")
    assert back == {q: trec_order(r) for q, r in run.items()}
    assert sorted(s for _, s in back["q1"]) == sorted(vals)  # identical floats, not just close
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert lines[-2:] == ["q2 Q0 b 1 0.5 negminer", "q2 Q0 a 2 0.5 negminer"]  # rank = trec_eval's order


class CoarseModel:
    """Scores tiny_beir by colour and object only (place and number ignored), so targets sharing them tie.

    The object weighs 1 + 2**-21: 'object only' beats 'colour only' by less than 1e-6, and every sum is
    exact in float32, so ties are exact whatever order the matrix product adds in.
    """

    COLOURS = ["red", "green", "blue", "yellow", "black", "white", "purple", "orange"]
    THINGS = ["car", "house", "bird", "boat", "chair", "lamp", "book", "shoe", "kite", "cup"]
    SYN = {"crimson": "red", "emerald": "green", "azure": "blue", "golden": "yellow", "ebony": "black",
           "ivory": "white", "violet": "purple", "amber": "orange", "automobile": "car", "dwelling": "house",
           "sparrow": "bird", "vessel": "boat", "seat": "chair", "lantern": "lamp", "volume": "book",
           "boot": "shoe", "glider": "kite", "mug": "cup"}

    def _encode(self, texts, w_thing):
        out = torch.zeros(len(texts), len(self.COLOURS) + len(self.THINGS))
        for n, t in enumerate(texts):
            for w in re.findall(r"\w+", t.lower()):
                w = self.SYN.get(w, w)
                if w in self.COLOURS:
                    out[n, self.COLOURS.index(w)] = 1.0
                elif w in self.THINGS:
                    out[n, len(self.COLOURS) + self.THINGS.index(w)] = w_thing
        return out

    def encode_queries(self, texts, batch_size=128, progress=False):
        return self._encode(texts, 1.0)

    def encode_targets(self, texts, batch_size=128, progress=False):
        return self._encode(texts, 1.0 + 2.0 ** -21)


def test_evaluate_with_tied_scores_matches_ir_measures_on_run_file(tiny_beir, tmp_path):
    from negminer.data.load import load_dataset

    ds, model = load_dataset(tiny_beir), CoarseModel()
    m = evaluate(model, ds, out_dir=tmp_path / "ev")
    path = tmp_path / "ev" / "run.trec"
    run = read_run(path)
    assert run == retrieve(model, ds)  # same floats, same (trec_eval) order, in memory and in the file
    assert all(r == trec_order(r) and len(r) == 100 for r in run.values())
    qrels = ds.qrels["test"]
    top_ties = [q for q, r in run.items() if r[0][1] == r[1][1] and any(t in qrels[q] for t, _ in r[:2])]
    assert len(top_ties) >= 5  # the relevant target shares the top score with another one
    assert any(0 < r[i][1] - r[i + 1][1] < 1e-6 for r in run.values() for i in range(99))

    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved == dict(m) and list(saved) == list(METRIC_KEYS) and saved["num_queries"] == 40
    agg = ir_measures.calc_aggregate(list(MEASURES.values()), qrels, list(ir_measures.read_trec_run(str(path))))
    for key, meas in MEASURES.items():
        assert abs(saved[key] - agg[meas]) < 1e-9, (key, saved[key], agg[meas])
    assert_same(compute_metrics(run, qrels, per_query=True)["per_query"], ir_per_query(qrels, path))
