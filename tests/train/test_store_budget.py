"""A store larger than the memory the process may use (memory-mapped: ``--store-max-ram-mb``) trains,
checkpoints and resumes exactly; the same run with the store in RAM cannot even start."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

DRIVER = Path(__file__).with_name("budget_driver.py")
N, MARGIN_MB = 300_000, 350  # store: 300K x 384 fp32 = 439 MB; the run itself needs ~270 MB

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA semantics are Linux's")


def drive(tmp_path, max_ram_mb):
    return subprocess.run([sys.executable, str(DRIVER), str(tmp_path), str(N), str(MARGIN_MB), str(max_ram_mb)],
                          capture_output=True, text=True, timeout=900)


def test_memory_mapped_store_beyond_the_budget_trains_checkpoints_and_resumes(tmp_path):
    r = drive(tmp_path, max_ram_mb=64)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["store_mb"] > MARGIN_MB and out["path"].endswith("run/store.npy")
    assert out["resumed"] == out["losses"][3:] and out["final_resumed"] == out["final"]
    assert (tmp_path / "saved" / "store.npy").stat().st_size > out["store_mb"] * 2**20  # the checkpoint's copy


def test_the_same_store_in_ram_does_not_fit(tmp_path):
    r = drive(tmp_path, max_ram_mb=0)
    assert r.returncode != 0 and "Cannot allocate memory" in r.stderr
