"""torchrun on CPU (gloo): a rank killed with SIGKILL, or stopped (SIGSTOP) past --dist-timeout, ends the job
with one line from the surviving rank (``negminer: error: rank 0: ...``: the cause and the checkpoint to resume
from), exit code 1 and no Python traceback from negminer's ranks. torchrun's own report (its launcher's
traceback and the ChildFailedError block) stays: it is printed by the launcher process, which the ranks do not
control; the ranks' error file only puts their line into that block."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist

pytestmark = [
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the ranks' processes in /proc"),
]

DRIVER = str(Path(__file__).resolve().parents[1] / "driver.py")
COMMON = ["--encoder", "static", "--lr", "0.05", "--seed", "3", "--quiet", "--no-zero-shot", "--eval-batch-size",
          "64", "--batch-size", "4", "--steps", "400", "--save-every", "1"]


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    try:  # a zombie (exited, not reaped yet by torchrun) is not alive
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _ranks(launcher: int) -> dict[int, int]:
    """rank -> pid of torchrun's workers (its children, with RANK in their environment)."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if _ppid(int(d)) != launcher:
                continue
            env = Path(f"/proc/{d}/environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        for kv in env:
            if kv.startswith(b"RANK="):
                out[int(kv[5:])] = int(d)
    return out


class Job:
    """2 ranks of ``negminer train`` under torchrun (through tests/driver.py, every step 0.3 s longer)."""

    def __init__(self, data, out, *extra):
        self.out = Path(out)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", DRIVER,
               "--sleep", "0.3", "--", "train", "--data", str(data), "--out", str(out), *COMMON, *extra]
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
        self.pids: dict[int, int] = {}

    def wait_for_training(self, limit: float = 120.0) -> None:
        """Until the first checkpoint is written and a step is logged."""
        end = time.monotonic() + limit
        log = self.out / "train_log.jsonl"
        while not ((self.out / "checkpoint").is_dir() and log.exists() and log.read_text().strip()):
            assert self.p.poll() is None, self.p.communicate()[0][-3000:]
            assert time.monotonic() < end, "training did not start"
            time.sleep(0.1)
        self.pids = _ranks(self.p.pid)
        assert sorted(self.pids) == [0, 1], self.pids

    def finish(self, limit: float) -> tuple[int, str, float]:
        t = time.monotonic()
        try:
            text = self.p.communicate(timeout=limit)[0]
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        return self.p.returncode, text, time.monotonic() - t

    def kill(self) -> None:
        for pid in self.pids.values():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self.p.poll() is None:
            self.p.kill()
        self.p.communicate()


def assert_one_line_from_the_ranks(text: str, cause: str) -> str:
    lines = text.splitlines()
    ours = [x for x in lines if x.startswith("negminer: error: rank")]
    assert len(ours) == 1, text[-4000:]
    assert ours[0].startswith("negminer: error: rank 0: " + cause), ours[0]
    assert "/checkpoint is intact: fix the cause and rerun with --resume" in ours[0], ours[0]
    # no traceback from the ranks: no frame of negminer or the driver, no "[rankN]:" lines; the one traceback
    # left is torchrun's launcher raising ChildFailedError
    assert not [x for x in lines if x.lstrip().startswith('File "') and ("negminer" in x or "driver.py" in x)], \
        text[-4000:]
    assert not [x for x in lines if x.startswith("[rank")], text[-4000:]
    assert text.count("Traceback (most recent call last)") <= 1
    return ours[0]


def test_a_killed_rank_ends_the_job_with_one_line_from_the_other(tiny_beir, tmp_path):
    job = Job(tiny_beir, tmp_path / "run", "--dist-timeout", "20")
    try:
        job.wait_for_training()
        os.kill(job.pids[1], signal.SIGKILL)
        rc, text, took = job.finish(60)
    finally:
        if job.p.poll() is None:
            job.kill()
    assert rc == 1 and took < 30, (rc, took, text[-3000:])
    line = assert_one_line_from_the_ranks(text, "lost another process during a collective (gloo: ")
    assert str(tmp_path / "run" / "checkpoint") in line
    assert "ChildFailedError" in text  # torchrun's report: the killed rank is its root cause
    assert "Signal 9 (SIGKILL)" in text


def test_a_stopped_rank_ends_the_job_after_the_dist_timeout(tiny_beir, tmp_path):
    job = Job(tiny_beir, tmp_path / "run", "--dist-timeout", "5")
    try:
        job.wait_for_training()
        t = time.monotonic()
        os.kill(job.pids[1], signal.SIGSTOP)
        while _alive(job.pids[0]) and time.monotonic() - t < 40:
            time.sleep(0.1)
        took = time.monotonic() - t
        # torchrun would wait 30 s for the stopped rank to take its SIGTERM before SIGKILL: do it now
        os.kill(job.pids[1], signal.SIGKILL)
        rc, text, _ = job.finish(60)
    finally:
        if job.p.poll() is None:
            job.kill()
    assert 4.5 < took < 20, (took, text[-3000:])
    assert rc == 1, text[-3000:]
    assert_one_line_from_the_ranks(text, "no answer from another process within --dist-timeout 5 s (gloo: ")


def test_only_the_backends_errors_become_one_line(monkeypatch):
    """In one process (a gloo group of 1): gloo's errors are the backend's, a shape error is not."""
    from negminer import dist as nd

    monkeypatch.setattr(nd, "_FAILED", None)
    monkeypatch.setattr(nd, "_TIMEOUT_S", 300.0)
    closed = RuntimeError("[/x/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                          "[127.0.0.1]:35010. This is typically caused by a remote worker crashing. GLHF!")
    late = RuntimeError("[/x/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:129] Timed out waiting "
                        "300000ms for send operation to complete")
    other = RuntimeError("The size of tensor a (3) must match the size of tensor b (4) at non-singleton dimension 0")
    assert not nd.is_backend_failure(closed)  # no process group: nothing is the backend's
    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        assert nd.is_backend_failure(closed) and nd.is_backend_failure(late)
        assert not nd.is_backend_failure(other) and not nd.is_backend_failure(ValueError("gloo"))
        assert str(nd.rank_failed(closed)) == ("rank 0: lost another process during a collective "
                                               "(gloo: Connection closed by peer [127.0.0.1]:35010)")
        e = nd.rank_failed(late)
        assert e.timeout and str(e) == ("rank 0: no answer from another process within --dist-timeout 300 s "
                                        "(gloo: Timed out waiting 300000ms for send operation to complete)")
        assert e.exit_code == 1
    finally:
        dist.destroy_process_group()
