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
