"""negminer compare: per-query metrics written by evaluation, paired tests across queries."""

import json

import numpy as np
import pytest
from scipy import stats

from negminer.cli import main
from negminer.eval.compare import METRICS, compare


def write(run, values):
    run.mkdir(parents=True)
    with open(run / "per_query.jsonl", "w") as f:
        for i, v in enumerate(values):
            f.write(json.dumps({"query_id": f"q{i}", **{k: v for k in METRICS}}) + "\n")
    return str(run)


def test_paired_difference_interval_and_p_values(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.uniform(size=60)
    b = np.clip(a + 0.05 + rng.normal(0, 0.1, 60), 0, 1)
    rows = compare([write(tmp_path / "a", a), write(tmp_path / "b", b)], ("ndcg@10",))
    (r,) = rows
    d = b - a
    assert r["diff"] == pytest.approx(d.mean())
    half = stats.t.ppf(0.975, 59) * d.std(ddof=1) / np.sqrt(60)
    assert r["ci95"] == pytest.approx([d.mean() - half, d.mean() + half])
    assert r["p_ttest"] == pytest.approx(stats.ttest_rel(b, a).pvalue)
    assert r["p_wilcoxon"] == pytest.approx(stats.wilcoxon(d).pvalue)
    assert r["p_ttest"] < 0.05


def test_seeds_are_averaged_per_query_and_equal_runs_give_p_1(tmp_path):
    a1, a2 = write(tmp_path / "a1", [0, 1, 0, 1]), write(tmp_path / "a2", [1, 1, 0, 0])
    b = write(tmp_path / "b", [0.5, 1, 0, 0.5])
    (r,) = compare([f"{a1},{a2}", b], ("recall@10",))
    assert r["diff"] == 0 and r["p_ttest"] == 1.0 and r["mean_a"] == pytest.approx(0.5)


def test_gzipped_per_query_files_read_the_same(tmp_path):
    import gzip

    a, b = write(tmp_path / "a", [0, 1, 0.5]), write(tmp_path / "b", [1, 1, 0.5])
    z = tmp_path / "z"
    z.mkdir()
    (z / "per_query.jsonl.gz").write_bytes(gzip.compress((tmp_path / "b" / "per_query.jsonl").read_bytes()))
    assert compare([a, str(z)], ("ndcg@10",)) == [dict(r, b=str(z)) for r in compare([a, b], ("ndcg@10",))]


def test_runs_on_other_queries_are_refused(tmp_path, capsys):
    a, b = write(tmp_path / "a", [0, 1, 1]), write(tmp_path / "b", [0, 1])
    assert main(["compare", a, b]) == 2
    assert "other queries" in capsys.readouterr().err


def test_training_writes_per_query_metrics_that_average_to_metrics_json(tiny_beir, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--data", str(tiny_beir), "--out", str(out), "--encoder", "static", "--steps", "2",
                 "--batch-size", "8", "--quiet", "--no-zero-shot"]) == 0
    per = [json.loads(x) for x in (out / "per_query.jsonl").read_text().splitlines()]
    m = json.loads((out / "metrics.json").read_text())
    assert len(per) == m["num_queries"] == 40
    for k in METRICS:
        assert np.mean([p[k] for p in per]) == pytest.approx(m[k])
    assert main(["compare", str(out), str(out), "--metric", "ndcg@10"]) == 0
    assert "+0.0000" in capsys.readouterr().out
