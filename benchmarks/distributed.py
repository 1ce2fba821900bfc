"""One process against torchrun with 2 processes on this machine: the same global batch, throughput.

all-MiniLM-L6-v2 on ../shared/data/scifact (query/target max length 32/128; in-batch softmax) and the
static tower on gcide-rd (in-batch softmax and the negative cache), the global batch fixed (64): one process with
``--batch-size 64`` and 2 threads, against ``torchrun --nproc_per_node 2`` with ``--batch-size 32`` and one
thread per process (the machine has 2 cores). Each row: training seconds for ``--steps`` steps (after
setup, evaluation excluded), examples per second, the ratio to the one-process row, the final loss (equal
for the static tower; MiniLM's dropout masks differ per process), peak RSS of rank 0, and the exact command.

    python benchmarks/distributed.py
    python benchmarks/distributed.py --steps 20 --only minilm

Writes benchmarks/results/distributed.json and distributed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from negminer.fileio import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SHARED_DATA, provenance, write_result  # noqa: E402

SETUPS = {
    "minilm": dict(data="scifact", args=["--encoder", "minilm", "--query-max-length", "32", "--target-max-length", "128",
                                         "--lr", "2e-5"]),
    "static": dict(data="gcide-rd", args=["--encoder", "static", "--max-length", "32", "--lr", "0.01"]),
}
NEGATIVES = {"inbatch": [], "cache": ["--negatives", "cache", "--num-negatives", "8"]}
# MiniLM with the cache re-encodes ~1,100 targets of 128 tokens a step here (drawn negatives, eval-mode
# write-back): 30 s a step on two cores, left to a GPU machine
PLAN = {"minilm": ["inbatch"], "static": ["inbatch", "cache"]}


def one(setup: str, neg: str, procs: int, steps: int, batch: int, tmp: Path) -> dict:
    s = SETUPS[setup]
    out = tmp / f"{setup}-{neg}-{procs}"
    train = ["train", "--data", str(SHARED_DATA / s["data"]), "--out", str(out), *s["args"], *NEGATIVES[neg],
             "--steps", str(steps), "--batch-size", str(batch // procs), "--seed", "0", "--quiet", "--no-zero-shot",
             "--log-every", str(steps)]
    if procs == 1:
        cmd, env = [sys.executable, "-m", "negminer", *train], {"OMP_NUM_THREADS": "2"}
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
               "-m", "negminer", *train]
        env = {"OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    shown = " ".join(f"{k}={v}" for k, v in env.items()) + " " + shlex.join(
        ["python" if c == sys.executable else c for c in cmd]).replace(str(out), "RUN_DIR")
    if p.returncode != 0:
        return {"setup": setup, "negatives": neg, "processes": procs, "error": p.stderr.strip().splitlines()[-1],
                "run_command": shown}
    m = json.loads((out / "metrics.json").read_text())["train"]
    last = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()][-1]
    return {"setup": setup, "negatives": neg, "processes": procs, "global_batch": batch, "steps": steps,
            "train_seconds": m["seconds"], "examples_per_s": round(steps * batch / m["seconds"], 1),
            "loss": last["loss"], "peak_rss_mb": m["peak_rss_mb"], "target_encodes": m["target_encodes"],
            "run_command": shown}


def table(rows) -> str:
    head = "| setup | negatives | processes | global batch | steps | train s | examples/s | x one process | loss | peak RSS MB (rank 0) |"
    out = [head, "|---" * (head.count("|") - 1) + "|"]
    base = {(r["setup"], r["negatives"]): r for r in rows if r.get("processes") == 1 and "error" not in r}
    for r in rows:
        if "error" in r:
            out.append(f"| {r['setup']} | {r['negatives']} | {r['processes']} | error: {r['error']} |")
            continue
        b = base.get((r["setup"], r["negatives"]))
        x = f"{r['examples_per_s'] / b['examples_per_s']:.2f}" if b else "-"
        out.append(f"| {r['setup']} | {r['negatives']} | {r['processes']} | {r['global_batch']} | {r['steps']} | "
                   f"{r['train_seconds']:.1f} | {r['examples_per_s']} | {x} | {r['loss']} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64, help="global batch")
    ap.add_argument("--only", nargs="*", choices=list(SETUPS))
    args = ap.parse_args(argv)
    if not SHARED_DATA.exists():
        print(f"skipped: {SHARED_DATA} not found (the shared/ folder beside the repo)")
        return 0
    prov, rows = provenance(), []
    with tempfile.TemporaryDirectory() as tmp:
        for setup in args.only or list(SETUPS):
            for neg in PLAN[setup]:
                for procs in (1, 2):
                    rows.append({**one(setup, neg, procs, args.steps, args.batch, Path(tmp)), **prov})
                    print(table([rows[-1]]).splitlines()[2], flush=True)
    write_result("distributed", {"rows": rows})
    atomic_write_text(RESULTS / "distributed.md", table(rows) + "\n")
    print("\n" + table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
