"""Cache sampling cost at scale: Gumbel over all M cached targets against the IVF top-K prefilter.

Synthetic clustered unit vectors (d=384, M targets in sqrt(M) clusters), 64 queries near the data,
8 negatives per query, sampling temperature 0.05: per ``CacheSampler.sample`` call the time of both
in the same process (ratio), the prefilter's index build time (paid every ``--prefilter-rebuild``
steps), the recall of the exact top-K and the share of the full softmax mass its candidates hold.
No encoder is involved: this is the sampler's own cost, which grows with M.

    python benchmarks/prefilter.py                 # M = 100K, 1M, 3M; top 256 (8 lists) and 4096 (32)
    python benchmarks/prefilter.py --sizes 100000 --top 256 --nprobe 8

Writes benchmarks/results/prefilter.json and prefilter.md.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from negminer.fileio import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, provenance, write_result  # noqa: E402

D, B, K, TAU = 384, 64, 8, 0.05


def data(m: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.nn.functional.normalize(torch.randn(int(math.sqrt(m)), D, generator=g), dim=-1)
    emb = torch.empty(m, D)
    for i in range(0, m, 100_000):  # chunks keep the temporary small
        j = min(m, i + 100_000)
        c = centers[torch.randint(len(centers), (j - i,), generator=g)]
        emb[i:j] = torch.nn.functional.normalize(c + 0.03 * torch.randn(j - i, D, generator=g), dim=-1)
    pos = torch.randint(m, (B,), generator=g)
    q = torch.nn.functional.normalize(emb[pos] + 0.05 * torch.randn(B, D, generator=g), dim=-1)
    return emb, q, pos


def best_of(fn, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def run(m: int, top: int, nprobe: int, repeats: int) -> dict:
    from negminer.samplers import Batch, CacheSampler, Exclusions
    from negminer.store import TargetStore

    emb, q, pos = data(m)
    store = TargetStore(range(m), range(m), D)
    store.write(torch.arange(m), emb, 0)
    full = CacheSampler(K, seed=0)
    pre = CacheSampler(K, seed=0, prefilter_top=top, prefilter_nprobe=nprobe, prefilter_rebuild=10**9)
    for s in (full, pre):
        s.rows, s.full = torch.arange(m), True
    batch = Batch(1, pos, Exclusions([{int(p)} for p in pos], m), q, torch.Generator().manual_seed(0), 1 / TAU)
    t = time.perf_counter()
    pre.prefilter.build(lambda p: emb[p], m, 1)
    build = time.perf_counter() - t
    t_full = best_of(lambda: full.sample(q, batch, store), repeats)
    t_pre = best_of(lambda: pre.sample(q, batch, store), repeats)
    scores = q @ emb.T
    scores[torch.arange(B), pos] = -math.inf
    exact = scores.topk(top, dim=1).indices
    cand, _ = pre.prefilter.search(q, lambda p: emb[p])
    recall = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(cand, exact)) / (B * top)
    p = (scores / TAU).softmax(-1)
    mass = float(p.gather(1, cand).sum(1).mean())
    return {"targets": m, "top": top, "nlist": len(pre.prefilter.centroids), "nprobe": nprobe,
            "full_ms": round(1000 * t_full, 1), "prefilter_ms": round(1000 * t_pre, 1),
            "speedup": round(t_full / t_pre, 2), "build_s": round(build, 1), "recall_topk": round(recall, 4),
            "softmax_mass": round(mass, 4)}


def table(rows) -> str:
    head = ("| targets | top K | lists | probed | full Gumbel ms/step | prefilter ms/step | speed-up | "
            "index build s | recall of exact top-K | softmax mass in candidates |")
    out = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        out.append(f"| {r['targets']:,} | {r['top']} | {r['nlist']} | {r['nprobe']} | {r['full_ms']:.0f} | "
                   f"{r['prefilter_ms']:.0f} | {r['speedup']:.2f} | {r['build_s']:.1f} | {r['recall_topk']:.3f} | "
                   f"{r['softmax_mass']:.3f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000, 3_000_000])
    ap.add_argument("--top", type=int, nargs="*", default=[256, 4096], help="one run per (top, nprobe) pair")
    ap.add_argument("--nprobe", type=int, nargs="*", default=[8, 32])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    if len(args.top) != len(args.nprobe):
        ap.error("--top and --nprobe need the same number of values")
    for m in args.sizes:
        for top, nprobe in zip(args.top, args.nprobe):
            rows.append({**run(m, top, nprobe, args.repeats), **provenance(),
                         "command": f"python benchmarks/prefilter.py --sizes {m} --top {top} --nprobe {nprobe} "
                                    f"--repeats {args.repeats}"})
            print(rows[-1], flush=True)
    write_result("prefilter", {"rows": rows, "dim": D, "queries": B, "negatives": K, "temperature": TAU})
    atomic_write_text(RESULTS / "prefilter.md", table(rows) + "\n")
    print("\n" + table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
