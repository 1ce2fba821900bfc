"""Resume reproduces an uninterrupted run: same loss curve, same final metrics, also after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tinydata import write_tiny_beir

ARGS = ["--encoder", "static", "--steps", "12", "--batch-size", "8", "--lr", "0.05", "--seed", "3",
        "--query-max-length", "16", "--target-max-length", "16", "--quiet"]


DRIVER = str(Path(__file__).resolve().parents[1] / "driver.py")


def _train(data, out, *extra, faults=(), wait=True):
    """``faults``: options of tests/driver.py (fault-injection hooks), e.g. ("--sleep", "0.4")."""
    cmd = [sys.executable, DRIVER, *faults, "--", "train", "--data", str(data), "--out", str(out), *ARGS, *extra]
    e = dict(os.environ)
    if wait:
        r = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        return r
    return subprocess.Popen(cmd, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _curve(run: Path):
    rows = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines() if x.strip()]
    return [(r["step"], r["loss"], r["lr"], r["query_encodes"], r["target_encodes"], r.get("staleness"))
            for r in rows]


def _metrics(run: Path):
    m = json.loads((run / "metrics.json").read_text())
    m["train"].pop("seconds"), m["train"].pop("peak_rss_mb"), m["train"].pop("phases")  # timings
    return m


SAMPLERS = {"inbatch": [], "cache": ["--negatives", "cache", "--num-negatives", "4", "--cache-size", "100",
                                    "--refresh-fraction", "0.1", "--refresh-order", "random"],
            "cache-prefilter": ["--negatives", "cache", "--num-negatives", "4", "--refresh-fraction", "0.05",
                                "--prefilter-top", "30", "--prefilter-nprobe", "2", "--prefilter-rebuild", "4"],
            "stream": ["--negatives", "cache-stream", "--num-negatives", "4", "--cache-size", "40",
                       "--stream-policy", "lru", "--loss", "cache-surrogate"]}


@pytest.fixture(scope="module", params=list(SAMPLERS))
def reference(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("resume")
    data = write_tiny_beir(root / "data")
    extra = SAMPLERS[request.param]
    _train(data, root / "full", *extra)
    return data, root, extra


def test_reference_run_writes_run_directory(reference):
    data, root, extra = reference
    run = root / "full"
    for name in ("config.yaml", "train_log.jsonl", "metrics.json", "checkpoint/model.safetensors",
                 "checkpoint/optimizer.safetensors", "checkpoint/trainer.json", "model"):
        assert (run / name).exists(), name
    curve = _curve(run)
    assert [c[0] for c in curve] == list(range(1, 13))
    assert curve[-1][3] == 12 * 8
    if not extra:
        assert curve[-1][4] == 12 * 8  # in-batch: one positive per example, nothing else encoded
    m = json.loads((run / "metrics.json").read_text())
    assert {"recall@1", "ndcg@10", "zero_shot", "train"} <= set(m)
    assert not list(run.glob(".checkpoint-*")), "temporary checkpoint folder left behind"


def test_periodic_checkpoints_do_not_change_the_run(reference):
    data, root, extra = reference
    part = root / "saving"
    _train(data, part, *extra, "--save-every", "4")
    assert _curve(part) == _curve(root / "full")
    assert _metrics(part) == _metrics(root / "full")


def test_resume_after_sigkill_matches_uninterrupted(reference):
    data, root, extra = reference
    run = root / "killed"
    p = _train(data, run, *extra, "--save-every", "3", faults=("--sleep", "0.4"), wait=False)
    deadline = time.time() + 300
    # kill between checkpoints: after step 7 is logged (checkpoint at 6, next at 9; the prefilter index was built at 5)
    while time.time() < deadline:
        rows = (run / "train_log.jsonl").read_text().splitlines() if (run / "train_log.jsonl").exists() else []
        if len(rows) >= 7:
            break
        assert p.poll() is None, p.stderr.read()[-3000:]
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    state = json.loads((run / "checkpoint" / "trainer.json").read_text())
    assert state["step"] in (6,), state["step"]
    assert not (run / "metrics.json").exists()
    _train(data, run, *extra, "--resume")
    assert _curve(run) == _curve(root / "full")
    assert _metrics(run) == _metrics(root / "full")
