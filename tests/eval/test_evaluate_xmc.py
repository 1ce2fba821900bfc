"""evaluate() adds P@k, nDCG@k and PSP@k for multi-label data, as the Extreme Classification Repository
computes them (filter pairs removed, every query of the split counted), and nothing for single-label data."""

import json
import math

import pytest
import torch

from negminer.cli import main
from negminer.data import load_dataset
from negminer.data.dataset import Dataset
from negminer.errors import ConfigError
from negminer.eval.evaluate import (XMC_KEYS, evaluate, format_metrics, parse_propensity, propensity_for, retrieve,
                                    xmc_scores)
from negminer.eval.metrics import METRIC_KEYS, compute_metrics

# each test query's scores over the six targets t0..t5 (all distinct: no ties)
RANKS = {"q0": [0, 3, 1, 2, 4, 5], "q1": [5, 2, 0, 1, 3, 4], "q2": [3, 0, 4, 1, 2, 5], "q3": [0, 1, 2, 3, 4, 5]}


class TableModel:
    """Targets are one-hot; a query text names its row of RANKS, scored 6, 5, ... down the ranking."""

    def encode_targets(self, texts, batch_size=128, progress=False):
        return torch.eye(len(texts))

    def encode_queries(self, texts, batch_size=128, progress=False):
        out = torch.zeros(len(texts), 6)
        for n, t in enumerate(texts):
            for rank, row in enumerate(RANKS[t.split()[0]]):
                out[n, row] = 6.0 - rank
        return out


def tiny(filtered=True):
    tids = [f"t{i}" for i in range(6)]
    qids = [f"q{i}" for i in range(8)]
    qrels = {"test": {"q0": {"t0": 1, "t1": 1}, "q1": {"t2": 1}, "q2": {"t3": 1, "t4": 1}, "q3": {"t5": 0}},
             "train": {"q4": {"t0": 1}, "q5": {"t0": 1, "t1": 1}, "q6": {"t2": 1}, "q7": {"t0": 1}}}
    return Dataset("tiny", tids, [f"text {t}" for t in tids], [""] * 6, qids, [f"{q} words" for q in qids], qrels,
                   filter_pairs={"test": {("q2", "t3")}} if filtered else {})


def inv_ps(a=0.55, b=1.5):
    """Jain et al. by hand: 4 training points; t0 labelled 3 times, t1 and t2 once, t3..t5 never."""
    c = (math.log(4) - 1) * (b + 1) ** a
    return [1 + c * (n + b) ** -a for n in (3, 1, 1, 0, 0, 0)]


def test_xmc_metrics_by_hand(tmp_path):
    ds = tiny()
    assert ds.is_multilabel()
    m = evaluate(TableModel(), ds, split="test", k=6, out_dir=tmp_path)
    assert list(m) == list(METRIC_KEYS) + list(XMC_KEYS)
    # q2's (q2, t3) is filtered: ranking t0 t4 ..., truth {t4}; q3 has no positive but counts (scores 0)
    assert m["xmc_queries"] == 4
    assert m["xmc_p@1"] == pytest.approx((1 + 0 + 0 + 0) / 4)
    assert m["xmc_p@3"] == pytest.approx((2 / 3 + 1 / 3 + 1 / 3) / 4)
    assert m["xmc_p@5"] == pytest.approx((2 / 5 + 1 / 5 + 1 / 5) / 4)
    d = [1 / math.log2(i + 2) for i in range(5)]
    assert m["xmc_ndcg@1"] == pytest.approx(1 / 4)
    assert m["xmc_ndcg@3"] == pytest.approx(((d[0] + d[2]) / (d[0] + d[1]) + d[1] + d[1]) / 4)
    q = inv_ps()
    assert m["xmc_psp@1"] == pytest.approx(q[0] / (max(q[0], q[1]) + q[2] + q[4]))
    assert m["xmc_psp@3"] == pytest.approx(1.0)  # every remaining positive is in the top 3
    assert m.stats["propensity"] == (0.55, 1.5)
    # the retrieval metrics are untouched: unfiltered, over the three queries with a positive
    run = retrieve(TableModel(), ds, "test", k=6)
    assert {k: m[k] for k in METRIC_KEYS} == pytest.approx(compute_metrics(run, ds.qrels["test"]))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert list(saved) == list(METRIC_KEYS) + list(XMC_KEYS) and saved == dict(m)


def test_filter_pairs_change_the_xmc_metrics_only():
    with_f, without = (evaluate(TableModel(), tiny(f), k=6) for f in (True, False))
    assert without["xmc_p@1"] == pytest.approx(2 / 4)  # q2's t3 now a hit at rank 1
    assert with_f["xmc_p@1"] == pytest.approx(1 / 4)
    assert {k: with_f[k] for k in METRIC_KEYS} == {k: without[k] for k in METRIC_KEYS}


def test_propensity_override_and_table():
    q = inv_ps(0.6, 2.6)
    m = evaluate(TableModel(), tiny(), k=6, propensity=(0.6, 2.6))
    assert m["xmc_psp@1"] == pytest.approx(q[0] / (max(q[0], q[1]) + q[2] + q[4]))
    assert propensity_for("LF-AmazonTitles-1.3M") == propensity_for("amazon-670k") == (0.6, 2.6)
    assert propensity_for("Wikipedia-500K") == propensity_for("WikiLSHTC-325K") == (0.5, 0.4)
    assert propensity_for("LF-AmazonTitles-131K") == propensity_for("tiny") == (0.55, 1.5)
    assert parse_propensity("0.5, 0.4") == (0.5, 0.4)
    for bad in ("0.5", "a,b", "0,1", "0.5,0.4,1"):
        with pytest.raises(ConfigError, match="--propensity"):
            parse_propensity(bad)


def test_single_label_data_has_no_xmc_keys():
    ds = tiny()
    ds.qrels = {"test": {"q0": {"t0": 1}, "q1": {"t2": 1, "t3": 0}}, "train": {"q4": {"t0": 1}}}
    assert not ds.is_multilabel()
    m = evaluate(TableModel(), ds, k=6)
    assert list(m) == list(METRIC_KEYS) and "propensity" not in m.stats
    assert len(format_metrics(m).splitlines()) == 2


def test_format_metrics_second_table():
    m = evaluate(TableModel(), tiny(), k=6)
    head, vals, xhead, xvals = format_metrics(m).splitlines()
    assert head.split() == list(METRIC_KEYS) and xhead.split() == list(XMC_KEYS)
    assert xvals.split()[-1] == "4" and float(xvals.split()[0]) == pytest.approx(m["xmc_p@1"], abs=1e-4)


def _xmc_folder(root):
    (root / "raw").mkdir(parents=True)
    (root / "raw" / "trn_X.txt").write_text("q4\nq5\nq6\nq7\n")
    (root / "raw" / "tst_X.txt").write_text("q0\nq1\nq2\nq3\n")
    (root / "raw" / "Y.txt").write_text("".join(f"label {i}\n" for i in range(6)))
    (root / "trn_X_Y.txt").write_text("4 6\n0:1\n0:1 1:1\n2:1\n0:1\n")
    (root / "tst_X_Y.txt").write_text("4 6\n0:1 1:1\n2:1\n3:1 4:1\n\n")
    (root / "filter_labels_test.txt").write_text("2 3\n")
    return root


def test_eval_command_with_propensity_flag(tmp_path, monkeypatch, capsys):
    """`negminer eval --propensity A,B` on an XMC folder: the same figures as evaluate() on the same data."""
    import negminer.encoders

    monkeypatch.setattr(negminer.encoders, "build_encoder", lambda spec: TableModel())
    root = _xmc_folder(tmp_path / "xmc")
    assert main(["eval", "--model", "fake", "--data", str(root), "--propensity", "0.6,2.6", "--quiet",
                 "--out", str(tmp_path / "ev")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[2].split() == list(XMC_KEYS)
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    q = inv_ps(0.6, 2.6)
    assert saved["xmc_queries"] == 4 and saved["xmc_p@1"] == pytest.approx(1 / 4)
    assert saved["xmc_psp@1"] == pytest.approx(q[0] / (max(q[0], q[1]) + q[2] + q[4]))
    assert main(["eval", "--model", "fake", "--data", str(root), "--propensity", "x"]) == 2
    assert "--propensity expects A,B" in capsys.readouterr().err


def test_real_multilabel_data_oracle(shared_data):
    """gcide-senses (BEIR layout, several senses per headword) is multi-label; an oracle run that puts
    every positive first scores P@1 = nDCG@5 = 1 and PSP@5 <= 1."""
    if not (shared_data / "gcide-senses").is_dir():
        pytest.skip(f"gcide-senses not found in {shared_data}")
    ds = load_dataset(shared_data / "gcide-senses")
    assert ds.is_multilabel() and not ds.xmc
    run = {q: [(t, 1.0) for t, g in judged.items() if g > 0] for q, judged in ds.qrels["test"].items()}
    m = xmc_scores(run, ds, "test")
    assert m["xmc_queries"] == len(ds.qrels["test"]) and m["xmc_p@1"] == 1.0 and m["xmc_ndcg@5"] == pytest.approx(1.0)
    assert 0.5 < m["xmc_psp@5"] <= 1.0 + 1e-12
