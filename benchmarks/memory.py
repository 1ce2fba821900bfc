"""Peak memory and step time against effective batch: plain batches against GradCache.

all-MiniLM-L6-v2, in-batch softmax on ../shared/data/gcide-rd (113,388 training pairs: a batch of 4,096
fits; builtin:pycode has 3,627 training queries), query/target max length 32, one optimiser step per row after the first (which pays for
loading and warm-up), each row in a fresh process so that its peak RSS (VmHWM) is its own.
Rows: plain at each batch size; gradcache (``--memory gradcache``) at each effective batch with
``--chunk-size`` rows per chunk. Goal (#14): effective batch 4096 with gradcache at no more than
1.25x the peak memory of a plain batch of 64. Accumulation and ContAccum rows come with #14's rest.

    python benchmarks/memory.py                          # batches 64 256 1024 4096
    python benchmarks/memory.py --batches 64 4096 --chunk-size 64

Writes benchmarks/results/memory.json and memory.md (rows: method, effective_batch, peak_rss_mb,
peak_cuda_mb when on a GPU, step_seconds, commit, command).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from negminer.fileio import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SHARED_DATA, peak_rss_mb, provenance, reset_peak_rss, write_result  # noqa: E402


def one_row(method: str, batch: int, chunk: int, out: str) -> dict:
    """In this process: set up a trainer, take one step, then time one more."""
    import torch

    from negminer.config import resolve
    from negminer.train.trainer import Trainer

    opts = {"memory": "gradcache", "chunk_size": chunk} if method == "gradcache" else {}
    cfg = resolve(dict(data=str(SHARED_DATA / "gcide-rd"), out=out, encoder="minilm", batch_size=batch, steps=2, quiet=True,
                       zero_shot=False, query_max_length=32, target_max_length=32, lr=1e-5, **opts))
    tr = Trainer(cfg)
    tr.setup_sampler()
    tr.model.train()
    tr.train_step(0)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    tr.train_step(1)
    sec = time.perf_counter() - t
    return {"method": method, "effective_batch": batch, "chunk_size": chunk if method == "gradcache" else None,
            "peak_rss_mb": peak_rss_mb(), "step_seconds": round(sec, 2),
            "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None}


def table(rows) -> str:
    base = next((r["peak_rss_mb"] for r in rows if r["method"] == "plain" and r["effective_batch"] == 64), None)
    head = "| method | effective batch | chunk | peak RSS MB | x plain 64 | step s |"
    out = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        ratio = f"{r['peak_rss_mb'] / base:.2f}" if base and r.get("peak_rss_mb") else "-"
        out.append(f"| {r['method']} | {r['effective_batch']} | {r['chunk_size'] or '-'} | "
                   f"{r.get('peak_rss_mb', '-')} | {ratio} | {r.get('step_seconds', '-')} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", nargs="*", type=int, default=[64, 256, 1024, 4096])
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--plain-max", type=int, default=1024, help="largest plain batch tried (memory grows with it)")
    ap.add_argument("--row", nargs=3, metavar=("METHOD", "BATCH", "CHUNK"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.row:  # child process: one measurement, as JSON on stdout
        reset_peak_rss()
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(one_row(args.row[0], int(args.row[1]), int(args.row[2]), tmp)))
        return 0
    if not (SHARED_DATA / "gcide-rd").exists():
        print(f"skipped: {SHARED_DATA / 'gcide-rd'} not found (the shared/ folder beside the repo)")
        return 0
    prov, rows = provenance(), []
    plan = [("plain", b) for b in args.batches if b <= args.plain_max] + [("gradcache", b) for b in args.batches]
    for method, b in plan:
        p = subprocess.run([sys.executable, __file__, "--row", method, str(b), str(args.chunk_size)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            rows.append({"method": method, "effective_batch": b, "chunk_size": args.chunk_size, "error":
                         p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}", **prov})
        else:
            rows.append({**json.loads(p.stdout.strip().splitlines()[-1]), **prov})
        print(table([rows[-1]]).splitlines()[2], flush=True)
    write_result("memory", {"rows": rows})
    atomic_write_text(RESULTS / "memory.md", table(rows) + "\n")
    print("\n" + table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
