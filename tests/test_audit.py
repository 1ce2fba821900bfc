"""negminer audit: the pipeline built as train builds it, checked against brute force, one JSON object."""

import json

from negminer.cli import main


def audit(capsys, data, *argv):
    assert main(["audit", "--data", str(data), "--encoder", "static", "--batch-size", "8", "--quiet", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_audit_reports_an_unbiased_estimate_for_a_corrected_pipeline(tiny_beir, capsys):
    r = audit(capsys, tiny_beir, "--negatives", "cache", "--num-negatives", "4", "--margin", "0.05", "--draws", "60",
              "--at-step", "3", "--lr", "0.05")
    assert r["corrected"] and r["pipeline"]["sampler"] == "cache" and r["at_step"] == 3
    assert {"z_ratio", "z_ratio_se", "grad_rel_bias", "grad_rel_bias_se", "zgrad_t", "z_coverage"} <= set(r)
    assert abs(r["z_ratio"] - 1) < 3 * r["z_ratio_se"] and r["within_3_se"], r
    assert r["z_tail_index"] < 0.5 and r["heavy_tail"] is False, r
    assert any("margin" in c for c in r["pipeline"]["corrections"])


def test_audit_says_when_a_method_has_no_correction_by_design(tiny_beir, capsys):
    for argv, needle in ((["--negatives", "ance"], "no correction by design"),
                         ([], "in-batch negatives alone"),
                         (["--negatives", "exact", "--selection", "topk"], "selection topk"),
                         (["--memory", "contaccum", "--accumulation", "2"], "ContAccum")):
        r = audit(capsys, tiny_beir, *argv)
        assert r["corrected"] is False and needle in r["note"], (argv, r)
        assert "z_ratio" not in r


def test_audit_refuses_what_train_refuses(tiny_beir, capsys):
    assert main(["audit", "--data", str(tiny_beir), "--negatives", "uniform", "--margin", "0.1"]) == 2
    assert "--margin needs a sampler that scores" in capsys.readouterr().err


def test_tail_index_tells_heavy_from_light_tails():
    """Hill's estimate on samples of known tail index (fixed seeds): Pareto with xi = 1/alpha, and light tails."""
    import numpy as np

    from negminer.audit import tail_index

    rng = np.random.default_rng(0)
    for xi in (0.8, 0.6, 0.3):
        est = np.mean([tail_index(rng.pareto(1 / xi, 2000) + 1) for _ in range(20)])
        assert abs(est - xi) < 0.06, (xi, est)
    assert tail_index(np.abs(rng.normal(size=2000))) < 0.3  # no power tail
    assert tail_index(rng.exponential(size=2000)) < 0.5
    assert np.isnan(tail_index(np.ones(10)))  # too few samples to say


def test_audit_flags_a_heavy_tailed_estimate(tiny_beir, capsys, monkeypatch):
    """Where the samples are heavy-tailed the JSON says so and the 3-SE verdict is not read as bias."""
    from negminer import audit as audit_mod

    monkeypatch.setattr(audit_mod, "tail_index", lambda z: 0.9)
    r = audit(capsys, tiny_beir, "--negatives", "uniform", "--num-negatives", "4", "--draws", "20")
    assert r["heavy_tail"] is True and r["z_tail_index"] == 0.9 and "heavy-tailed" in r["note"]
