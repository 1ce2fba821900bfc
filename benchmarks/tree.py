"""The tree sampler against the exact passes and the bare matmul: build time, time per step, quality of draws.

Per row (n, d, noise, mode): a bf16 store of synthetic clustered unit vectors (n / 200 clusters, each row its
cluster's centre plus Gaussian noise of norm ``noise``, renormalised; queries drawn the same way), or
(``--data gcide-senses`` / ``gcide-rd``) all-MiniLM-L6-v2 embeddings of a dataset's targets and test queries
(32 tokens, encoded once, cached under runs/tree_emb/, not committed); B = 64 queries, k = 64 negatives per query
(``--k``), logit scale 20 (tau 0.05), timed in the same process (best of ``--reps``):

  build_seconds              KMeansTree over the store (branching 16, leaf ``--leaf-size``),
  sample_ms_per_step         TreeSampler.sample in ``mode`` exact (adaptive rejection, ``--beam`` leaves scored
                             up front, an exact pass when the bounds are loose), proposal or descend (no pass,
                             see samplers/tree.py),
  matmul_ms_per_step         the bare scoring pass (the store's chunked q . e, nothing else): the floor,
  bruteforce_ms_per_step     the exact streaming sampler with replacement (samplers/gumbel.py),
  exact_topk_ms_per_step     the exact streaming sampler without replacement (Gumbel-top-k),
  speedup_vs_bruteforce      bruteforce over tree (the first rows' field),
  speedup_vs_fastest_exact   the faster exact pass over tree; speedup_vs_matmul: matmul over tree,
  tv                       total variation between the tree's empirical draw distribution and the
                           exact softmax, for ``--tv-queries`` queries and ``--tv-steps`` x k draws each,
  tv_exact_noise           the same for as many exact multinomial draws (what sampling noise alone gives),
  tree_accept, tree_scored, tree_logz_gap, tree_exact_mass, tree_tv (proposal: TV(Q, softmax) estimated
                           from the step's own draws)  the sampler's own statistics,
  peak_rss_mb              the process's peak resident memory during the row.

    python benchmarks/tree.py                              # n = 1e5 1e6 2e7, d = 64 128
    python benchmarks/tree.py --n 1e6 --d 64 --spread 0.6 --mode exact proposal
    python benchmarks/tree.py --data gcide-senses gcide-rd --mode exact proposal descend
    python benchmarks/tree.py --data gcide-senses gcide-rd --mode exact proposal descend --k 8

Writes benchmarks/results/tree.json and tree.md (rows of earlier runs with another key are kept).
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
from common import REPO, RESULTS, SHARED_DATA, peak_rss_mb, provenance, reset_peak_rss, write_result  # noqa: E402

B, K, SCALE = 64, 64, 20.0


def clustered(n: int, d: int, seed: int, centres: torch.Tensor | None = None, spread: float = 0.6):
    g = torch.Generator().manual_seed(seed)
    if centres is None:
        centres = torch.nn.functional.normalize(torch.randn(max(1, n // 200), d, generator=torch.Generator().manual_seed(0)), dim=1)
    x = centres[torch.randint(len(centres), (n,), generator=g)] + spread * torch.randn(n, d, generator=g) / d ** 0.5
    return torch.nn.functional.normalize(x, dim=1), centres


def make_store(n: int, d: int, spread: float) -> Source:
    from negminer.store import TargetStore

    store = TargetStore(range(n), range(n), d, dtype="bf16")
    centres = torch.nn.functional.normalize(torch.randn(max(1, n // 200), d, generator=torch.Generator().manual_seed(0)), dim=1)
    for s in range(0, n, 1 << 20):
        x, _ = clustered(min(1 << 20, n - s), d, seed=1 + s, centres=centres, spread=spread)
        store.emb[s:s + len(x)] = x.to(torch.bfloat16)
    store.age.zero_()
    return Source(store, centres, spread)


class Source:
    """A store and its queries: synthetic clusters (``centres``) or a dataset's encoded test queries (``real``)."""

    def __init__(self, store, centres=None, spread=None, real=None, data="synthetic"):
        self.store, self.centres, self.spread, self.real, self.data = store, centres, spread, real, data

    def queries(self, step: int, b: int = B) -> torch.Tensor:
        if self.real is None:
            return clustered(b, self.store.dim, seed=10_000 + step, centres=self.centres, spread=self.spread)[0]
        return self.real[(torch.arange(b) + step * b) % len(self.real)]


def real_source(name: str) -> Source:
    """all-MiniLM-L6-v2 embeddings of ``name``'s targets ('title text') and test queries, 32 tokens each (the
    benchmarks' length for these dictionary tasks), encoded once under bf16 autocast and cached under
    runs/tree_emb/ (not committed)."""
    from safetensors.torch import load_file, save_file

    from negminer.store import TargetStore

    path = REPO / "runs" / "tree_emb" / f"{name}.safetensors"
    if not path.exists():
        from negminer.data.load import load_dataset
        from negminer.encoders import build_encoder

        ds = load_dataset(SHARED_DATA / name)
        test = ds.qrels.get("test") or next(iter(ds.qrels.values()))
        qids = list(test)[:1024]
        model = build_encoder("minilm", query_max_length=32, target_max_length=32)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the embeddings as a bf16 store keeps them
            t = model.encode_targets(ds.target_inputs(), batch_size=256, progress=True)
            q = model.encode_queries([ds.query_texts[ds.query_index[i]] for i in qids], progress=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"targets": t.contiguous(), "queries": q.contiguous()}, str(tmp))
        tmp.replace(path)
    x = load_file(str(path))
    store = TargetStore(range(len(x["targets"])), range(len(x["targets"])), x["targets"].shape[1], dtype="bf16")
    store.emb[:] = x["targets"].to(torch.bfloat16)
    store.age.zero_()
    return Source(store, real=x["queries"], data=name)


def batch_for(src: Source, step: int, b: int = B):
    from negminer.samplers import Batch, Exclusions

    q = src.queries(step, b)
    g = torch.Generator().manual_seed(step)
    pos = torch.randint(src.store.n, (b,), generator=g)
    return q, Batch(step, pos, Exclusions([{int(p)} for p in pos], src.store.n), q, g, SCALE)


def best_ms(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1000


def tv_rows(src: Source, sampler, queries: int, steps: int):
    """Mean TV of the tree's draws and of exact multinomial draws (same count) to the exact softmax."""
    from negminer.samplers import Batch, Exclusions

    store = src.store
    q = batch_for(src, 999)[0][:queries]
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


def run_rows(src: Source, modes, beam: int, reps: int, tv_queries: int, tv_steps: int, leaf: int,
             k: int = K) -> list[dict]:
    """One row per mode over one store: the tree built once, the exact passes and the matmul timed once."""
    from negminer.index import KMeansTree
    from negminer.samplers import ExactSampler, TreeSampler

    store = src.store
    n, d = store.n, store.dim
    t = time.perf_counter()
    tree = KMeansTree(branching=16, leaf_size=leaf).build(store.embeddings, n)
    build = time.perf_counter() - t
    batches = [batch_for(src, i) for i in range(2 * reps + 2)]

    def timed(fn):
        it = iter(batches)
        return best_ms(lambda: fn(*next(it)), reps)

    def scan(q, bt):
        for _ in store.score_chunks(q):
            pass

    matmul = timed(scan)
    brute = timed(lambda q, bt: ExactSampler(k, replacement=True, sample_temperature=1 / SCALE).sample(q, bt, store))
    topk = timed(lambda q, bt: ExactSampler(k, sample_temperature=1 / SCALE).sample(q, bt, store))
    fastest = min(brute, topk)
    rows = []
    for mode in modes:
        reset_peak_rss()
        s = TreeSampler(k, beam=beam, sample_temperature=1 / SCALE, mode=mode)
        s.tree = tree
        s.setup(store, None, 0)
        samp = timed(lambda q, bt: s.sample(q, bt, store))
        stats = dict(s.last_stats)
        print(f"{src.data} n {n} d {d} noise {src.spread} {mode}: build {build:.1f} s, tree {samp:.1f} ms, "
              f"matmul {matmul:.1f} ms, exact {brute:.1f} / {topk:.1f} ms, {stats}", flush=True)
        tv, tv0 = tv_rows(src, s, tv_queries, tv_steps)
        radius = tree.radius[tree.depth]
        rows.append({
            "data": src.data, "mode": mode, "n": n, "d": d, "spread": src.spread, "noise": src.spread, "dtype": "bf16",
            "b": B, "k": k, "beam": beam, "leaf_size": leaf, "depth": tree.depth,
            "leaf_radius_median": round(float(radius.median()), 4), "leaf_radius_max": round(float(radius.max()), 4),
            "leaves": len(tree.members), "build_seconds": round(build, 2), "sample_ms_per_step": round(samp, 2),
            "matmul_ms_per_step": round(matmul, 2), "bruteforce_ms_per_step": round(brute, 2),
            "exact_topk_ms_per_step": round(topk, 2), "speedup_vs_bruteforce": round(brute / samp, 2),
            "speedup_vs_fastest_exact": round(fastest / samp, 2), "speedup_vs_matmul": round(matmul / samp, 3),
            "tv": round(tv, 4), "tv_exact_noise": round(tv0, 4), "tv_ratio": round(tv / tv0, 3),
            "tv_draws_per_query": tv_steps * k, **{name: round(v, 4) for name, v in stats.items()},
            "peak_rss_mb": peak_rss_mb(), "threads": torch.get_num_threads()})
    return rows


def table(rows) -> str:
    head = ("| data | mode | k | n | d | noise | leaf size | leaves | build s | tree ms/step | matmul ms | exact pass ms "
            "(with / without replacement) | vs fastest exact | vs matmul | TV | TV of an exact sample | tree's TV estimate | "
            "accept | leaves scored per query | fallback | peak RSS MB |")
    out = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        beam = f" (beam {r['beam']})" if r.get("beam", 8) != 8 else ""

        def f(key, fmt="{:.1f}", unit=""):
            return "-" if r.get(key) is None else fmt.format(r[key]) + unit
        out.append(
            f"| {r.get('data', 'synthetic')} | {r.get('mode', 'exact')}{beam} | {r.get('k', K)} | {r['n']:,} | {r['d']} | {r.get('noise', r.get('spread'))} | "
            f"{r.get('leaf_size', 64)} | {r['leaves']:,} | {r['build_seconds']:.1f} | {r['sample_ms_per_step']:.1f} | "
            f"{f('matmul_ms_per_step')} | {r['bruteforce_ms_per_step']:.1f} / {f('exact_topk_ms_per_step')} | "
            f"{f('speedup_vs_fastest_exact', '{:.2f}', 'x')} | {f('speedup_vs_matmul', '{:.2f}', 'x')} | {r['tv']:.3f} | "
            f"{r['tv_exact_noise']:.3f} | {f('tree_tv', '{:.3f}')} | {r.get('tree_accept', 0):.3f} | "
            f"{r.get('tree_scored', 0):.0f} | {r.get('tree_fallback', 0)} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", nargs="*", default=["synthetic"],
                    help="synthetic, or datasets in ../shared/data whose MiniLM embeddings make the store (gcide-senses, gcide-rd)")
    ap.add_argument("--n", nargs="*", type=float, default=[1e5, 1e6, 2e7])
    ap.add_argument("--d", nargs="*", type=int, default=[64, 128])
    ap.add_argument("--mode", nargs="*", default=["exact"], choices=("exact", "proposal", "descend"))
    ap.add_argument("--beam", type=int, default=8)
    ap.add_argument("--k", type=int, default=K, help="draws per query (training uses 4-8)")
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
    tail = (f"--mode {' '.join(args.mode)} --k {args.k} --beam {args.beam} --leaf-size {args.leaf_size} --reps {args.reps} "
            f"--tv-queries {args.tv_queries} --tv-steps {args.tv_steps}")
    new = []
    for data in args.data:
        if data == "synthetic":
            stores = ((lambda n=n, d=d, sp=sp: make_store(n, d, sp), f"--n {n} --d {d} --spread {sp}")
                      for n in map(int, args.n) for d in args.d for sp in args.spread)
        elif not (SHARED_DATA / data).exists():
            print(f"skipped {data}: {SHARED_DATA / data} not found (the shared/ folder beside the repo)")
            continue
        else:
            stores = [(lambda data=data: real_source(data), f"--data {data}")]
        for make, what in stores:
            for row in run_rows(make(), args.mode, args.beam, args.reps, args.tv_queries, args.tv_steps, args.leaf_size,
                                args.k):
                row.update(prov, command=f"python benchmarks/tree.py {what} {tail}")
                new.append(row)
                print(table([row]).splitlines()[-1], flush=True)
    key = lambda r: (r.get("data", "synthetic"), r["n"], r["d"], r.get("spread", 0.6) or 0, r.get("leaf_size", 64),  # noqa: E731
                     r.get("mode", "exact"), r.get("k", K), r.get("beam", 8))
    done = {key(r) for r in new}
    rows = sorted([r for r in old if key(r) not in done] + new, key=key)
    write_result("tree", {"rows": rows})
    atomic_write_text(RESULTS / "tree.md", table(rows) + "\n")
    print("\n" + table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
