"""Every sampler trains with every loss it supports; counters add up; diagnostics are logged;
resume with a cache reproduces the uninterrupted run."""

import json

import pytest

from negminer.cli import main

BASE = ["--encoder", "static", "--steps", "6", "--batch-size", "8", "--lr", "0.05", "--seed", "5", "--quiet",
        "--no-zero-shot", "--num-negatives", "4"]


def rows(run):
    return [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("extra,target_encodes", [
    (["--negatives", "uniform"], None),
    (["--negatives", "exact", "--refresh-every", "3"], 160 * 3),  # fill at 0, refresh after steps 3 and 6
    (["--negatives", "exact", "--selection", "topk", "--no-inbatch"], None),
    (["--negatives", "ance", "--refresh-every", "4", "--ance-top", "20"], 160 * 2),
    (["--negatives", "cache", "--refresh-fraction", "0.05"], 160 + 6 * 8),
    (["--negatives", "cache", "--loss", "cache-surrogate"], 160),
    (["--negatives", "cache", "--prefilter-top", "16", "--prefilter-nprobe", "2", "--refresh-fraction", "0.05"],
     160 + 6 * 8),
    (["--negatives", "cache-stream", "--cache-size", "32", "--stream-policy", "lru"], 0),
], ids=["uniform", "exact", "exact-topk", "ance", "cache", "cache-surrogate", "cache-prefilter",
                                                                 "cache-stream"])
def test_sampler_trains(tiny_beir, tmp_path, extra, target_encodes):
    out = tmp_path / "r"
    assert main(["train", "--data", str(tiny_beir), "--out", str(out), *BASE, *extra]) == 0
    log = rows(out)
    assert len(log) == 6 and all(r["loss"] == r["loss"] for r in log)
    last = log[-1]
    assert last["query_encodes"] == 48
    if target_encodes is not None:
        assert last["refresh_encodes"] == target_encodes
    # positives (48) + distinct drawn negatives per step (<= 8 * 4) + refreshes
    assert 48 + last["refresh_encodes"] < last["target_encodes"] <= 48 + 6 * 32 + last["refresh_encodes"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["train"]["target_encodes"] == last["target_encodes"]


@pytest.mark.parametrize("extra", [[], ["--prefilter-top", "20", "--prefilter-nprobe", "3"]], ids=["all", "prefilter"])
def test_diagnostics_logged(tiny_beir, tmp_path, extra):
    out = tmp_path / "d"
    assert main(["train", "--data", str(tiny_beir), "--out", str(out), *BASE, "--negatives", "cache",
                 "--diagnose-every", "3", *extra]) == 0
    diag = [r["diagnostics"] for r in rows(out) if "diagnostics" in r]
    assert len(diag) == 2
    for d in diag:
        assert 0 <= d["tv"] <= 1 and d["kl"] >= 0 and 0 <= d["top10_found"] <= 1 and -1 <= d["grad_cosine"] <= 1
