"""torchrun on CPU (gloo): 2 ranks with per-rank batch B take the step one process takes with batch 2B
(in-batch, per-query hard negatives from the store, sampled cache negatives, GradCache); rank 0 alone writes
the run folder with world_size and global counters; a rank that dies ends the run with an error, not a hang."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from negminer.cli import main

COMMON = ["--encoder", "static", "--lr", "0.05", "--seed", "3", "--quiet", "--no-zero-shot", "--steps", "2",
          "--eval-batch-size", "64"]


DRIVER = str(Path(__file__).resolve().parents[1] / "driver.py")


def torchrun(data, out, *extra, nproc=2, env=None, timeout=240, faults=()):
    """``faults``: options of tests/driver.py (fault-injection hooks), e.g. ("--die-at", "3", "--die-rank", "1")."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           DRIVER, *faults, "--", "train", "--data", str(data), "--out", str(out), *COMMON, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def weights(run):
    return load_file(str(run / "checkpoint" / "model.safetensors"))


def assert_same_weights(a, b, rel=1e-5):
    """Relative Frobenius distance per tensor. Not elementwise: Adam's step is lr x g / (|g| + eps), so an
    entry whose gradient is ~1e-9 of rounding noise moves by a noisy fraction of lr; a wrong gradient (a
    misaligned label, a missing shard) moves many entries by ~lr, far beyond this."""
    assert a.keys() == b.keys()
    for k in a:
        d = float((a[k] - b[k]).norm() / a[k].norm().clamp(min=1e-12))
        assert d < rel, (k, d, float((a[k] - b[k]).abs().max()))


CASES = {
    "inbatch": [],
    "exact-topk": ["--negatives", "exact", "--selection", "topk", "--num-negatives", "3"],
    "cache": ["--negatives", "cache", "--num-negatives", "3"],
    "gradcache": ["--negatives", "cache", "--num-negatives", "3", "--memory", "gradcache", "--chunk-size", "3"],
    "cache-store-shard": ["--negatives", "cache", "--num-negatives", "3", "--store-shard"],
    "exact-nystrom-store-shard": ["--negatives", "exact", "--num-negatives", "3", "--refresh", "write-back,nystrom",
                                  "--nystrom-every", "1", "--nystrom-landmarks", "12", "--store-shard"],
    "all": ["--negatives", "all", "--chunk-size", "7"],
    "ngame": ["--batching", "ngame", "--ngame-cluster-size", "4", "--ngame-embeddings", "encode"],
    "contaccum": ["--memory", "contaccum", "--accumulation", "2", "--bank-size", "8", "--negatives", "exact",
                  "--selection", "topk", "--num-negatives", "2"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_take_the_single_process_step_of_the_global_batch(tiny_beir, tmp_path, case):
    steps = ["--steps", "3" if "store-shard" in case else "1"]  # a sharded store's refreshes show from step 2
    one = tmp_path / "one"
    assert main(["train", "--data", str(tiny_beir), "--out", str(one), *COMMON, "--batch-size", "8",
                 *CASES[case], *steps]) == 0
    two = tmp_path / "two"
    p = torchrun(tiny_beir, two, "--batch-size", "4", *CASES[case], *steps)
    assert p.returncode == 0, p.stderr[-3000:]
    assert_same_weights(weights(one), weights(two))
    la, lb = ([json.loads(x) for x in (r / "train_log.jsonl").read_text().splitlines()] for r in (one, two))
    assert [r["loss"] for r in lb] == pytest.approx([r["loss"] for r in la], rel=1e-5)
    # AdamW's first steps barely see the gradient's scale: the gradient norm must agree too
    assert [r["grad_norm"] for r in lb] == pytest.approx([r["grad_norm"] for r in la], rel=1e-5)
    assert lb[-1]["world_size"] == 2 and "world_size" not in la[-1]
    for key in ("query_encodes", "target_encodes"):  # global counters: the sum over the ranks
        assert lb[-1][key] == la[-1][key]
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (one, two))
    assert mb["train"]["world_size"] == 2 and mb["train"]["query_encodes"] == ma["train"]["query_encodes"] >= 8
    assert mb["ndcg@10"] == pytest.approx(ma["ndcg@10"], abs=1e-6)  # evaluation sharded over the ranks
    assert not list(two.glob("*.tmp*"))


def test_a_rank_that_dies_stops_the_run_with_an_error(tiny_beir, tmp_path):
    t = time.monotonic()
    p = torchrun(tiny_beir, tmp_path / "r", "--batch-size", "4", "--steps", "50", "--dist-timeout", "20",
                 faults=("--die-at", "3", "--die-rank", "1"))
    assert p.returncode != 0
    assert time.monotonic() - t < 180
    assert "rank 1" in p.stderr.lower() or "exitcode" in p.stderr.lower() or "error" in p.stderr.lower()


@pytest.mark.parametrize("shard", [[], ["--store-shard"], ["--store-shard", "--store-path", "MAP"]],
                         ids=["replicated", "sharded", "sharded-memory-mapped"])
def test_resume_on_another_number_of_processes_with_the_same_global_batch(tiny_beir, tmp_path, shard):
    """2 ranks x 4 die after the checkpoint of step 2; one process x 8 resumes and ends where a single
    uninterrupted process ends. One process x 4 (another global batch) is refused. A sharded store's
    checkpoint holds every row (rank 0 collects them), so it resumes on any number of processes."""
    shard = [str(tmp_path / "store.npy") if x == "MAP" else x for x in shard]
    steps = ["--steps", "6", "--save-every", "2", "--negatives", "cache", "--num-negatives", "3", *shard]
    full = tmp_path / "full"
    assert main(["train", "--data", str(tiny_beir), "--out", str(full), *COMMON, "--batch-size", "8", *steps]) == 0
    run = tmp_path / "run"
    p = torchrun(tiny_beir, run, "--batch-size", "4", *steps, faults=("--die-at", "3", "--die-rank", "1"))
    assert p.returncode != 0 and (run / "checkpoint").exists()
    if "--store-path" in shard:  # each process mapped its half; the checkpoint holds all rows
        held = [np.load(tmp_path / f"store.rank{r}.npy", mmap_mode="r").shape[0] for r in (0, 1)]
        assert sum(held) == np.load(run / "checkpoint" / "store.npy", mmap_mode="r").shape[0] > max(held)
    assert main(["train", "--data", str(tiny_beir), "--out", str(run), *COMMON, "--batch-size", "4", *steps,
                 "--resume"]) != 0  # 4 != 8: refused, and said why
    assert main(["train", "--data", str(tiny_beir), "--out", str(run), *COMMON, "--batch-size", "8", *steps,
                 "--resume"]) == 0
    la, lb = ([json.loads(x) for x in (r / "train_log.jsonl").read_text().splitlines()] for r in (full, run))
    assert [r["loss"] for r in lb] == pytest.approx([r["loss"] for r in la], rel=1e-5)
    assert_same_weights(weights(full), weights(run))


def test_replicas_that_drift_apart_stop_the_run_at_the_checkpoint(tiny_beir, tmp_path):
    p = torchrun(tiny_beir, tmp_path / "r", "--batch-size", "4", "--negatives", "cache", "--num-negatives", "2",
                 "--steps", "4", "--save-every", "2", faults=("--skew-rank", "1"))
    assert p.returncode != 0 and "target stores differ" in p.stderr
    assert not (tmp_path / "r" / "checkpoint").exists()
