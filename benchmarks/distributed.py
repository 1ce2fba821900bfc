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
NEGATIVES = {"inbatch": [], "cache": ["--negatives", "cache", "--num-negatives", "8"],
             "cache, --store-shard": ["--negatives", "cache", "--num-negatives", "8", "--store-shard"]}
# MiniLM with the cache re-encodes ~1,100 targets of 128 tokens a step here (drawn negatives, eval-mode
# write-back): 30 s a step on two cores, left to a GPU machine
PLAN = {"minilm": ["inbatch"], "static": ["inbatch", "cache", "cache, --store-shard"]}


def one(setup: str, neg: str, procs: int, steps: int, batch: int, tmp: Path) -> dict:
    s = SETUPS[setup]
    out = tmp / f"{setup}-{neg.split(',')[0]}-{len(NEGATIVES[neg])}-{procs}"
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


def draw_worker(n: int, dim: int, b: int, k: int, reps: int, sharded: int, out: str) -> None:
    """Under torchrun or alone: one streaming draw (exact softmax sampler, k without replacement) over a
    store of n random rows, ``reps`` times; each rank scores its share of the rows (samplers/base.py), or
    with ``sharded`` 0 all of them (what every rank did before the pass was split); ``sharded`` 2: each
    rank also holds only its rows (--store-shard)."""
    import resource
    import time

    import torch

    from negminer import dist
    from negminer.samplers import Batch, Exclusions
    from negminer.samplers.exact import ExactSampler
    from negminer.store import TargetStore

    d = dist.init_from_env()
    store = TargetStore(range(n), range(n), dim, shard=d if sharded == 2 else None)
    for s0 in range(0, n, 1 << 16):  # the same rows in every setting, never all of them at once
        e = torch.randn(min(n - s0, 1 << 16), dim, generator=torch.Generator().manual_seed(s0))
        store.write(torch.arange(s0, s0 + len(e)), torch.nn.functional.normalize(e, dim=-1), 0)
    q = torch.nn.functional.normalize(torch.randn(b, dim, generator=torch.Generator().manual_seed(-1)), dim=-1)
    pos = torch.arange(b)
    s, times = ExactSampler(k), []
    for t in range(reps + 1):  # the first pass warms caches and buffers
        batch = Batch(t, pos, Exclusions([{i} for i in range(b)], n), q, torch.Generator().manual_seed(t), 20.0,
                      dist=d if sharded else None)
        d.barrier()
        t0 = time.perf_counter()
        draw = s.sample(q, batch, store)
        times.append(time.perf_counter() - t0)
    if d.main:
        Path(out).write_text(json.dumps({"ms_per_draw": 1000 * sum(times[1:]) / reps, "ids_sum": int(draw.ids.sum()),
                                         "store_mb": store.nbytes / 2**20,
                                         "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    dist.shutdown()


def draw_row(procs: int, sharded: int, n: int, dim: int, b: int, k: int, reps: int, tmp: Path) -> dict:
    out = tmp / f"draw-{procs}-{sharded}.json"
    worker = [str(Path(__file__).resolve()), "--draw-worker", *map(str, (n, dim, b, k, reps, sharded)), str(out)]
    if procs == 1:
        cmd, env = [sys.executable, *worker], {"OMP_NUM_THREADS": "2"}
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), *worker]
        env = {"OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    shown = " ".join(f"{k}={v}" for k, v in env.items()) + " " + shlex.join(
        ["python" if c == sys.executable else c for c in cmd]).replace(str(out), "OUT.json")
    if p.returncode != 0:
        return {"setup": "draw", "processes": procs, "error": p.stderr.strip().splitlines()[-1], "run_command": shown}
    r = json.loads(out.read_text())
    return {"setup": "draw", "processes": procs, "scoring": "sharded" if sharded else "replicated",
            "store": "sharded" if sharded == 2 else "replicated", "store_mb": round(r["store_mb"], 1),
            "peak_rss_mb": round(r["peak_rss_mb"]), "targets": n, "dim": dim, "queries": b, "k": k, "reps": reps,
            "ms_per_draw": round(r["ms_per_draw"], 1), "ids_sum": r["ids_sum"], "run_command": shown}


def draw_table(rows) -> str:
    out = ["| targets | dim | queries | k | processes | each process scores | each process holds | store MB per process "
           "| peak RSS MB (rank 0) | ms per draw | x one process | same draws |", "|---" * 12 + "|"]
    base = next((r for r in rows if r["processes"] == 1 and "error" not in r), None)
    for r in rows:
        if "error" in r:
            out.append(f"| draw | {r['processes']} | error: {r['error']} |")
            continue
        x = f"{base['ms_per_draw'] / r['ms_per_draw']:.2f}" if base else "-"
        same = "yes" if base and base["ids_sum"] == r["ids_sum"] else "no"
        part = "all rows" if r["processes"] == 1 or r["scoring"] == "replicated" else f"1/{r['processes']} of the rows"
        held = f"1/{r['processes']} of the rows" if r.get("store") == "sharded" else "all rows"
        out.append(f"| {r['targets']:,} | {r['dim']} | {r['queries']} | {r['k']} | {r['processes']} | {part} | {held} | "
                   f"{r.get('store_mb', '-')} | {r.get('peak_rss_mb', '-')} | {r['ms_per_draw']} | {x} | {same} |")
    return "\n".join(out)


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
    ap.add_argument("--only", nargs="*", choices=[*SETUPS, "draw"])
    ap.add_argument("--draw", default="1000000,128,256,8,5", help="targets,dim,queries,k,reps of the draw rows")
    ap.add_argument("--draw-worker", nargs=7, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.draw_worker:
        draw_worker(*map(int, args.draw_worker[:6]), args.draw_worker[6])
        return 0
    if not SHARED_DATA.exists():
        print(f"skipped: {SHARED_DATA} not found (the shared/ folder beside the repo)")
        return 0
    prov, rows = provenance(), []
    draws = []
    with tempfile.TemporaryDirectory() as tmp:
        for setup in args.only or [*SETUPS, "draw"]:
            if setup == "draw":  # the sampler's pass alone: each rank scores half the store
                for procs, sharded in ((1, 1), (2, 0), (2, 1), (2, 2)):
                    draws.append({**draw_row(procs, sharded, *map(int, args.draw.split(",")), Path(tmp)), **prov})
                    print(draw_table(draws).splitlines()[-1], flush=True)
                continue
            for neg in PLAN[setup]:
                for procs in (1, 2):
                    rows.append({**one(setup, neg, procs, args.steps, args.batch, Path(tmp)), **prov})
                    print(table([rows[-1]]).splitlines()[2], flush=True)
    old = json.loads((RESULTS / "distributed.json").read_text()) if (RESULTS / "distributed.json").exists() else {}
    done = {(r["setup"], r["negatives"]) for r in rows}  # --only: the other rows are kept
    rows = [r for r in old.get("rows", []) if (r["setup"], r["negatives"]) not in done] + rows
    draws = draws or old.get("draws", [])
    write_result("distributed", {"rows": rows, "draws": draws})
    text = table(rows) + "\n\nThe sampler's pass alone (exact softmax sampler, store in fp32):\n\n" + draw_table(draws)
    atomic_write_text(RESULTS / "distributed.md", text + "\n")
    print("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
