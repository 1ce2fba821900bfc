"""The tree sampler against brute force: build time, time per step and the quality of its draws.

Per row (n, d, spread): a bf16 store of synthetic clustered unit vectors (n / 200 clusters, each row
its cluster's centre plus Gaussian noise of norm ``spread``, renormalised; queries drawn the same way), B = 64 queries, k = 64
negatives per query, logit scale 20 (tau 0.05), timed in the same process (best of ``--reps``):

  build_seconds            KMeansTree over the store (branching 16, leaf ``--leaf-size``),
  sample_ms_per_step       TreeSampler.sample (exact adaptive rejection, ``--beam`` leaves scored up front),
  bruteforce_ms_per_step   the streaming exact sampler (ExactSampler, with replacement: one pass
                           over the store, samplers/gumbel.py),
  speedup_vs_bruteforce    their ratio,
  tv                       total variation between the tree's empirical draw distribution and the
                           exact softmax, for ``--tv-queries`` queries and ``--tv-steps`` x k draws each,
  tv_exact_noise           the same for as many exact multinomial draws (what sampling noise alone gives),
  tree_accept, tree_scored, tree_logz_gap, tree_exact_mass  the sampler's own statistics,
  peak_rss_mb              the process's peak resident memory during the row.

    python benchmarks/tree.py                              # n = 1e5 1e6 2e7, d = 64 128
    python benchmarks/tree.py --n 1e5 --d 64 --reps 3

Writes benchmarks/results/tree.json and tree.md (rows of earlier runs with other (n, d) are kept).
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

B, K, SCALE = 64, 64, 20.0


def clustered(n: int, d: int, seed: int, centres: torch.Tensor | None = None, spread: float = 0.6):
    g = torch.Generator().manual_seed(seed)
    if centres is None:
        centres = torch.nn.functional.normalize(torch.randn(max(1, n // 200), d, generator=torch.Generator().manual_seed(0)), dim=1)
    x = centres[torch.randint(len(centres), (n,), generator=g)] + spread * torch.randn(n, d, generator=g) / d ** 0.5
    return torch.nn.functional.normalize(x, dim=1), centres


def make_store(n: int, d: int, spread: float):
    from negminer.store import TargetStore

    store = TargetStore(range(n), range(n), d, dtype="bf16")
    centres = torch.nn.functional.normalize(torch.randn(max(1, n // 200), d, generator=torch.Generator().manual_seed(0)), dim=1)
    for s in range(0, n, 1 << 20):
        x, _ = clustered(min(1 << 20, n - s), d, seed=1 + s, centres=centres, spread=spread)
        store.emb[s:s + len(x)] = x.to(torch.bfloat16)
    store.age.zero_()
    return store, centres


def batch_for(store, centres, step: int, spread: float):
    from negminer.samplers import Batch, Exclusions

    q, _ = clustered(B, store.dim, seed=10_000 + step, centres=centres, spread=spread)
    g = torch.Generator().manual_seed(step)
    pos = torch.randint(store.n, (B,), generator=g)
    return q, Batch(step, pos, Exclusions([{int(p)} for p in pos], store.n), q, g, SCALE)


def best_ms(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1000


def tv_rows(store, centres, sampler, queries: int, steps: int, spread: float):
    """Mean TV of the tree's draws and of exact multinomial draws (same count) to the exact softmax."""
    from negminer.samplers import Batch, Exclusions

    q = batch_for(store, centres, 999, spread)[0][:queries]

    tv, tv0 = [], []
    counts = torch.zeros(queries, store.n)
    g = torch.Generator().manual_seed(7)
    for step in range(steps):
        pos = torch.zeros(queries, dtype=torch.long)
        bt = Batch(step, pos, Exclusions([set() for _ in range(queries)], store.n), q, torch.Generator().manual_seed(step), SCALE)
        d = sampler.sample(q, bt, store)
        for i in range(queries):
            counts[i] += torch.bincount(d.ids[i][~d.mask[i]], minlength=store.n).float()
    for i in range(queries):
        s = torch.cat([q[i:i + 1] @ store.embeddings(torch.arange(a, min(store.n, a + (1 << 20)))).T
                       for a in range(0, store.n, 1 << 20)], 1)[0] * SCALE
        p = torch.softmax(s, 0)
        m = int(counts[i].sum())
        tv.append(0.5 * float((counts[i] / m - p).abs().sum()))
        cdf = p.double().cumsum(0)  # inverse CDF: torch.multinomial takes at most 2^24 categories
        u = torch.rand(m, generator=g, dtype=torch.float64) * cdf[-1]
        exact = torch.bincount(torch.searchsorted(cdf, u).clamp(max=store.n - 1), minlength=store.n).float()
        tv0.append(0.5 * float((exact / m - p).abs().sum()))
    return sum(tv) / len(tv), sum(tv0) / len(tv0)


def run_row(n: int, d: int, beam: int, reps: int, tv_queries: int, tv_steps: int, spread: float, leaf: int) -> dict:
    from negminer.index import KMeansTree
    from negminer.samplers import ExactSampler, TreeSampler

    reset_peak_rss()
    store, centres = make_store(n, d, spread)
    t = time.perf_counter()
    tree = KMeansTree(branching=16, leaf_size=leaf).build(store.embeddings, n)
    build = time.perf_counter() - t
    s = TreeSampler(K, beam=beam, sample_temperature=1 / SCALE)
    s.tree = tree
    s.setup(store, None, 0)
    ex = ExactSampler(K, replacement=True, sample_temperature=1 / SCALE)
    batches = [batch_for(store, centres, i, spread) for i in range(2 * reps + 2)]
    it = iter(batches)
    samp = best_ms(lambda: s.sample(*next(it), store), reps)
    stats = dict(s.last_stats)
    it = iter(batches)
    brute = best_ms(lambda: ex.sample(*next(it), store), reps)
    print(f"n {n} d {d} spread {spread}: build {build:.1f} s, tree {samp:.1f} ms, brute force {brute:.1f} ms, {stats}",
          flush=True)
    tv, tv0 = tv_rows(store, centres, s, tv_queries, tv_steps, spread)
    radius = tree.radius[tree.depth]
    return {"n": n, "d": d, "spread": spread, "dtype": "bf16", "b": B, "k": K, "beam": beam, "leaf_size": leaf,
            "depth": tree.depth, "leaf_radius_median": round(float(radius.median()), 4),
            "leaf_radius_max": round(float(radius.max()), 4),
            "leaves": len(tree.members), "build_seconds": round(build, 2), "sample_ms_per_step": round(samp, 2),
            "bruteforce_ms_per_step": round(brute, 2), "speedup_vs_bruteforce": round(brute / samp, 2),
            "tv": round(tv, 4), "tv_exact_noise": round(tv0, 4), "tv_ratio": round(tv / tv0, 3),
            "tv_draws_per_query": tv_steps * K, **{k: round(v, 4) for k, v in stats.items()},
            "peak_rss_mb": peak_rss_mb(), "threads": torch.get_num_threads()}


def table(rows) -> str:
    head = ("| n | d | spread | leaf size | leaves | build s | tree ms/step | brute force ms/step | speedup | TV | "
            "TV of an exact sample | accept | leaves scored per query | log Z gap | fallback | peak RSS MB |")
    out = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        out.append(f"| {r['n']:,} | {r['d']} | {r['spread']} | {r.get('leaf_size', 64)} | {r['leaves']:,} | {r['build_seconds']:.1f} | "
                   f"{r['sample_ms_per_step']:.1f} | "
                   f"{r['bruteforce_ms_per_step']:.1f} | {r['speedup_vs_bruteforce']:.1f}x | {r['tv']:.3f} | "
                   f"{r['tv_exact_noise']:.3f} | {r.get('tree_accept', 0):.3f} | {r.get('tree_scored', 0):.0f} | {r.get('tree_logz_gap', 0):.3f} | "
                   f"{r.get('tree_fallback', 0)} | "
                   f"{r['peak_rss_mb']:.0f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", nargs="*", type=float, default=[1e5, 1e6, 2e7])
    ap.add_argument("--d", nargs="*", type=int, default=[64, 128])
    ap.add_argument("--beam", type=int, default=8)
    ap.add_argument("--leaf-size", type=int, default=64)
    ap.add_argument("--spread", nargs="*", type=float, default=[0.6, 0.1],
                    help="noise norm around each cluster centre (0.6: spread like real embeddings; 0.1: tight)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tv-queries", type=int, default=4)
    ap.add_argument("--tv-steps", type=int, default=20)
    args = ap.parse_args(argv)
    prov = provenance()
    jf = RESULTS / "tree.json"
    old = json.loads(jf.read_text())["rows"] if jf.exists() else []
    new = []
    for n in map(int, args.n):
        for d in args.d:
            for spread in args.spread:
                row = {**run_row(n, d, args.beam, args.reps, args.tv_queries, args.tv_steps, spread, args.leaf_size), **prov,
                       "command": f"python benchmarks/tree.py --n {n} --d {d} --spread {spread} --beam {args.beam} --leaf-size {args.leaf_size} "
                                  f"--reps {args.reps} --tv-queries {args.tv_queries} --tv-steps {args.tv_steps}"}
                new.append(row)
                print(table([row]).splitlines()[-1], flush=True)
    key = lambda r: (r["n"], r["d"], r.get("spread", 0.6), r.get("leaf_size", 64))  # noqa: E731
    done = {key(r) for r in new}
    rows = sorted([r for r in old if key(r) not in done] + new, key=key)
    write_result("tree", {"rows": rows})
    atomic_write_text(RESULTS / "tree.md", table(rows) + "\n")
    print("\n" + table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
