"""The sampler's own cost at 10^5 to 2 x 10^7 targets, against the bare matrix product over the same store.

Per row: one store (random unit vectors, d = 128, bf16 or fp16) on one device, B = 64 queries and
k = 8 negatives, and, timed in the same process (best of ``--reps``, after one warm-up):
  matmul_ms_per_step   the bare chunked product q @ E^T into a reused buffer (the least any exact
                       pass over the store can cost; same chunk size as the sampler),
  sample_ms_per_step   CacheSampler.sample over the whole store (exclusions of the 64 positives,
                       the in-batch watch list, Gumbel-top-k in one pass; ``--modes`` adds the pass
                       with log Z, as the cache-surrogate loss needs, and draws with replacement),
  ratio                sample / matmul; the goal is <= 1.5 for the default mode,
  peak_rss_mb          the process's peak resident memory during that row (store included),
  store_mb             the store's bytes.

    python benchmarks/sampler_scale.py                         # CPU, bf16, N = 1e5 1e6 1e7 2e7
    python benchmarks/sampler_scale.py --device cuda --dtype bf16 fp16

Writes benchmarks/results/sampler_scale.json (rows of earlier runs on other devices are kept).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from negminer.fileio import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, peak_rss_mb, provenance, reset_peak_rss, write_result  # noqa: E402


def make_store(n: int, d: int, dtype: str, device: str, seed: int = 0):
    from negminer.store import TargetStore

    store = TargetStore(range(n), range(n), d, dtype=dtype, device=device)
    g = torch.Generator().manual_seed(seed)
    for s in range(0, n, 1 << 17):
        x = torch.randn(min(1 << 17, n - s), d, generator=g)
        store.emb[s:s + len(x)] = torch.nn.functional.normalize(x, dim=-1).to(store.emb.device, store.emb.dtype)
    store.age.zero_()
    return store


def batch_for(store, b: int, step: int, seed: int = 0):
    from negminer.samplers import Batch, Exclusions

    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    pos = torch.randint(store.n, (b,), generator=g)
    q = torch.nn.functional.normalize(torch.randn(b, store.dim, generator=g), dim=-1)
    dev = store.scoring_device
    dg = torch.Generator(device=dev).manual_seed(step) if dev.type != "cpu" else None
    excl = Exclusions([{int(p)} for p in pos], store.n)
    return q.to(dev), Batch(step, pos, excl, q.to(dev), g, 20.0, dg)


def sync(dev) -> None:
    if torch.device(dev).type == "cuda":
        torch.cuda.synchronize()


def time_best(fn, reps: int, dev) -> float:
    fn()
    sync(dev)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(dev)
        best = min(best, time.perf_counter() - t)
    return best * 1000


def run_rows(n, d, dtype, device, modes, b, k, reps):
    """All modes on one store: the bare matmul and each mode timed back to back."""
    from negminer.samplers import CacheSampler, kernel
    from negminer.store.store import CPU_CHUNK, GPU_CHUNK

    store = make_store(n, d, dtype, device)
    q, _ = batch_for(store, b, 0)
    batches = iter([batch_for(store, b, i) for i in range(1, 6 * reps * len(modes) + 8)])  # built outside the timing

    def bare():
        for _ in store.score_chunks(q):
            pass

    for mode in modes:
        reset_peak_rss()  # the sampling phase, with the store resident
        s = CacheSampler(k, replacement=mode == "replacement")
        s.rows, s.full = torch.arange(n), True
        s.want_log_z = mode == "log_z"

        def sample():
            s.sample(*next(batches), store)

        r = reps * 3 if n <= 10**6 else reps  # short steps: more repeats for a stable best
        matmul = time_best(bare, r, device)
        samp = time_best(sample, r, device)
        yield {"n": n, "d": d, "dtype": dtype, "compute_dtype": str(store.compute_dtype).replace("torch.", ""),
               "device": str(store.scoring_device), "threads": torch.get_num_threads(), "mode": mode, "b": b, "k": k,
               "sample_ms_per_step": round(samp, 2), "matmul_ms_per_step": round(matmul, 2),
               "ratio": round(samp / matmul, 3), "peak_rss_mb": peak_rss_mb(), "store_mb": round(store.nbytes / 2**20, 1),
               "chunk": GPU_CHUNK if store.scoring_device.type == "cuda" else CPU_CHUNK,
               "kernel": kernel.status() if store.scoring_device.type == "cpu" else "torch (cuda)"}


def table(rows) -> str:
    head = "| device | dtype | N | mode | sample ms/step | matmul ms/step | ratio | peak RSS MB | store MB |"
    out = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        out.append(f"| {r['device']} | {r['dtype']} | {r['n']:,} | {r['mode']} | {r['sample_ms_per_step']:.1f} | "
                   f"{r['matmul_ms_per_step']:.1f} | {r['ratio']:.2f} | {r['peak_rss_mb']:.0f} | {r['store_mb']:.0f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", nargs="*", type=float, default=[1e5, 1e6, 1e7, 2e7])
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--dtype", nargs="*", default=["bf16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--modes", nargs="*", default=["sample", "log_z", "replacement"])
    ap.add_argument("--b", type=int, default=64)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    prov = provenance()
    new = []
    for dtype in args.dtype:
        for n in map(int, args.n):
            for row in run_rows(n, args.d, dtype, args.device, args.modes, args.b, args.k, args.reps):
                row = {**row, **prov}
                new.append(row)
                mode = row["mode"]
                print(f"{row['device']:>6} {dtype} N={n:>10,} {mode:<11} sample {row['sample_ms_per_step']:9.1f} ms  "
                      f"matmul {row['matmul_ms_per_step']:9.1f} ms  ratio {row['ratio']:.2f}  "
                      f"peak RSS {row['peak_rss_mb']:.0f} MB  store {row['store_mb']:.0f} MB", flush=True)
    jf = RESULTS / "sampler_scale.json"
    key = ("device", "dtype", "n", "mode", "d", "b", "k")
    old = []
    if jf.exists():
        done = {tuple(r[c] for c in key) for r in new}
        old = [r for r in json.loads(jf.read_text()).get("rows", []) if tuple(r[c] for c in key) not in done]
    rows = sorted(old + new, key=lambda r: (r["device"], r["dtype"], r["n"], r["mode"]))
    write_result("sampler_scale", {"rows": rows})
    atomic_write_text(RESULTS / "sampler_scale.md", table(rows) + "\n")
    print("\n" + table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
