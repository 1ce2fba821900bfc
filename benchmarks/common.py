"""Shared helpers for benchmarks: machine/version record, provenance (commit + command) and atomic JSON results."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]
# environment variables that change what a benchmark measures; a reproducing command must repeat them
ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "TOKENIZERS_PARALLELISM")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit() -> str | None:
    """``git rev-parse HEAD``, plus ``-dirty`` when the tree differs from it (tracked changes or untracked
    files, except under benchmarks/results/, which the benchmarks write); None outside a git checkout."""
    head = _git("rev-parse", "HEAD")
    if head is None:
        return None
    changed = [line[3:].split(" -> ")[-1].strip('"') for line in (_git("status", "--porcelain") or "").splitlines()]
    dirty = any(p and not p.startswith("benchmarks/results/") for p in changed)
    return head.strip() + ("-dirty" if dirty else "")


def command_line(argv=None) -> str:
    """The shell command that reproduces this run from the repository root: the ENV_KEYS variables that
    are set, ``python``, the script's path relative to the repository, the arguments."""
    argv = list(sys.argv if argv is None else argv)
    if argv and Path(argv[0]).is_file():
        script = Path(argv[0]).resolve()
        argv[0] = str(script.relative_to(REPO)) if script.is_relative_to(REPO) else str(script)
    env = [f"{k}={shlex.quote(os.environ[k])}" for k in ENV_KEYS if k in os.environ]
    return " ".join([*env, "python", shlex.join(argv)])


def provenance(argv=None) -> dict:
    """{"commit": git commit (+ "-dirty"), "command": command line that reproduces the run}: put it in
    every result row so that a number can be traced to the code and the invocation that produced it."""
    return {"commit": git_commit(), "command": command_line(argv)}


def machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    for mod in ("transformers", "sentence_transformers", "negminer"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional
            info[mod] = None
    return info


def reset_peak_rss() -> None:
    """Start a new peak-RSS measurement (Linux: /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak resident memory since the last reset, MB (VmHWM)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return float("nan")


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    payload = {"name": name, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               **provenance(), "machine": machine(), **payload}
    from negminer.fileio import atomic_write_json

    atomic_write_json(out, payload)
    return out


def shared_dataset(name: str):
    """The dataset ../shared/data/<name>, or None after printing why it is skipped (folder absent)."""
    data = SHARED_DATA / name
    if not data.exists():
        print(f"skipped: {data} not found (the shared/ folder beside the repo)")
        return None
    from negminer.data import load_dataset

    return load_dataset(data)


def merge_rerun(rows: list[dict], name: str) -> list[dict]:
    """After an ``--only`` rerun: the last run's rows of results/<name>.json in its order, the rerun ones
    replaced (by ``method``), new ones appended."""
    jf = RESULTS / f"{name}.json"
    if not jf.exists():
        return rows
    new = {r["method"]: r for r in rows}
    return [new.pop(r["method"], r) for r in json.loads(jf.read_text())["rows"]] + list(new.values())


def diagnostics_curve(log: list[dict], keys=("store_staleness", "stale_logit", "tv")) -> list[dict]:
    """The DiagnosticsHook measurements of a train log: [{"step", key: value}] rounded to 5 places."""
    return [{"step": r["step"], **{k: round(v, 5) for k, v in r["diagnostics"].items() if k in keys}}
            for r in log if "diagnostics" in r]


def run_seeded(name: str, preset: str, data: str, seeds, methods, run_row, finish, line) -> list[dict]:
    """The rows of results/<name>.json with every (preset, method, seed) asked for run by
    ``run_row(preset, method, seed, tmp)`` and put in place of its old row, ``finish(rows)`` after each;
    ``line(row)`` is printed per row. Prints why and returns None when ../shared/data/<data> is absent."""
    import tempfile

    jf = RESULTS / f"{name}.json"
    rows = json.loads(jf.read_text())["rows"] if jf.exists() else []
    if not (SHARED_DATA / data).exists():
        print(f"skipped: {SHARED_DATA / data} not found (the shared/ folder beside the repo)")
        return None
    key = lambda r: (r["preset"], r["method"], r["seed"])  # noqa: E731
    with tempfile.TemporaryDirectory(dir=REPO / "runs" if (REPO / "runs").is_dir() else None) as tmp:
        for seed in seeds:
            for m in methods:
                row = run_row(preset, m, seed, tmp)
                print(line(row), flush=True)
                rows = [r for r in rows if key(r) != key(row)] + [row]
                finish(rows)
    return rows


def seeded_main(name: str, doc: str, presets: dict, methods: dict, default: str, run_row, finish, line, argv=None) -> int:
    """The command line of a seeded benchmark: --preset, --seeds, --methods, --redraw (``run_seeded``)."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--preset", choices=list(presets), default=default)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--methods", nargs="+", choices=list(methods), default=list(methods))
    ap.add_argument("--redraw", action="store_true", help="only rebuild the tables, tests and plots from the JSON")
    args = ap.parse_args(argv)
    if args.redraw:
        rows = json.loads((RESULTS / f"{name}.json").read_text())["rows"]
    else:
        rows = run_seeded(name, args.preset, presets[args.preset]["data"], args.seeds, args.methods, run_row, finish, line)
    if rows is None:
        return 0
    finish(rows)
    return 0
