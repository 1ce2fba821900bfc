"""Extreme multi-label: NGAME batches and the DEXML losses against in-batch softmax, same encoder and budget.

gcide-senses (../shared/data/gcide-senses: a headword -> every one of its definitions, 126,046 labels,
80,220 training headwords, 1-50 positives, skewed), the static tower (MiniLM's token embeddings),
batch 64, lr 0.01, one seed, ``--steps`` steps (default 2 epochs, so that NGAME re-clusters once from
the embeddings recorded during the first):

  inbatch                 softmax over the batch's positives (other positives of a query masked),
  ngame                   the same loss over NGAME batches (clusters of 16 similar headwords),
  triplet + ngame         NGAME's own loss (margin 0.3 over the 5 hardest in-batch negatives),
  decoupled               DEXML's decoupled softmax (every positive of the query present in the batch is
                          a term; none is in another's denominator),
  decoupled + ngame, decoupled + cache (8 negatives per query from the negative cache, write-back),
  topk                    DEXML's soft top-k loss (k = 5),
and, in a second table at ``--all-steps`` steps (every label encoded twice per step: 126K x 2 target
encodes a step, ~100x the cost of a 64-query step), all (softmax: the sampled positive against every
non-positive; decoupled: every positive of the query a term) against in-batch and decoupled at the
same steps; and in-batch against NGAME over ``--long-steps`` (5 epochs, four re-clusterings).

On gcide-senses no label (definition) belongs to two headwords, so a batch never holds another
positive of a query: there the in-batch decoupled loss is the softmax up to float rounding, and
decoupling shows only where every label is a candidate (``--negatives all``). With NGAME batches the
rounding differences change the recorded embeddings, hence the re-clustering and the batches of the
second epoch: "decoupled + ngame" against "ngame" measures that run-to-run spread.

With ``--seeds 0 1 2`` each row is run per seed (``--only`` picks rows); every run's per-query metrics are kept
under results/xmc_runs/, and each method is tested against in-batch at the same steps, paired over queries
with the seeds averaged per query (P@1 and P@5; PSP@5 is a mean over queries' propensity-weighted hits, so it
gets its seed spread only). The table shows means over the seeds each row has.

Each row: P@1, P@5, PSP@5 (Extreme Classification Repository definitions, inverse propensities A=0.55,
B=1.5 from the training labels), recall@10, target and query encodes, training seconds, peak RSS.

    python benchmarks/xmc.py                      # both tables
    python benchmarks/xmc.py --only ngame decoupled   # rerun rows whose method starts with these words
    python benchmarks/xmc.py --only 'inbatch @6265' 'ngame @6265' --seeds 0 1 2

Writes benchmarks/results/xmc.json and xmc.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
from pathlib import Path

from negminer.fileio import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, peak_rss_mb, provenance, reset_peak_rss, shared_dataset, write_result  # noqa: E402

BASE = dict(encoder="static", batch_size=64, lr=0.01, query_max_length=32, target_max_length=32, quiet=True,
            zero_shot=False, eval_batch_size=512)
NGAME = dict(batching="ngame", ngame_cluster_size=16)


def configs(args) -> list[tuple[str, dict, int]]:
    s, a, long = args.steps, args.all_steps, args.long_steps
    main = [("inbatch", {}), ("ngame", NGAME), ("triplet + ngame", {**NGAME, "loss": "triplet"}),
            ("decoupled", {"loss": "decoupled"}), ("decoupled + ngame", {**NGAME, "loss": "decoupled"}),
            ("decoupled + cache", {"loss": "decoupled", "negatives": "cache", "num_negatives": 8}),
            ("topk", {"loss": "topk"})]
    rows = [(name, opts, s) for name, opts in main]
    if a:
        rows += [(f"{name} @{a}", opts, a) for name, opts in
                 [("inbatch", {}), ("decoupled", {"loss": "decoupled"}),
                  ("all (softmax)", {"negatives": "all", "chunk_size": 16384}),
                  ("all (decoupled)", {"loss": "decoupled", "negatives": "all", "chunk_size": 16384}),
                  ("all (topk)", {"loss": "topk", "negatives": "all", "chunk_size": 16384})]]
    if long:  # the NGAME regime: more epochs, several re-clusterings
        rows += [(f"{name} @{long}", opts, long) for name, opts in [("inbatch", {}), ("ngame", NGAME)]]
    return rows


def run(ds, name, opts, steps, seed, tmp) -> dict:
    from negminer.config import resolve
    from negminer.train.trainer import Trainer

    slug = name.replace(" ", "_").replace("+", "p").replace("@", "at").replace("(", "").replace(")", "") + f"-{seed}"
    out = Path(tmp) / slug
    cfg = resolve({"data": "", "out": str(out), "steps": steps, "seed": seed, **BASE, **opts})
    reset_peak_rss()
    m = Trainer(cfg, dataset=ds).run()
    t = m["train"]
    keep = RESULTS / "xmc_runs" / slug
    keep.mkdir(parents=True, exist_ok=True)
    (keep / "per_query.jsonl.gz").write_bytes(gzip.compress((out / "per_query.jsonl").read_bytes(), mtime=0))
    return {"method": name, "seed": seed, "run_dir": str(keep.relative_to(RESULTS.parent.parent)), "loss": cfg.loss, "batching": cfg.batching, "negatives": cfg.negatives, "steps": steps,
            "options": opts, "p@1": round(m["xmc_p@1"], 4), "p@5": round(m["xmc_p@5"], 4),
            "psp@5": round(m["xmc_psp@5"], 4), "recall@10": round(m["recall@10"], 4), "ndcg@10": round(m["ndcg@10"], 4),
            "target_encodes": t["target_encodes"], "query_encodes": t["query_encodes"], "seconds": t["seconds"],
            "peak_rss_mb": peak_rss_mb()}


def paired_tests(rows) -> list[dict]:
    """Each method against in-batch at the same steps (the seeds both have), seeds averaged per query."""
    from negminer.eval.compare import compare

    root = RESULTS.parent.parent
    by = {(r["method"], r.get("seed", 0)): r for r in rows if r.get("run_dir") and (root / r["run_dir"]).is_dir()}
    out = []
    for m in sorted({m for m, _ in by if not m.startswith("inbatch")}):
        base = "inbatch" + m[m.index(" @"):] if " @" in m else "inbatch"
        seeds = sorted(s for (mm, s) in by if mm == m and (base, s) in by)
        if not seeds:
            continue
        spec = lambda name: ",".join(str(root / by[(name, s)]["run_dir"]) for s in seeds)  # noqa: E731
        for c in compare([spec(base), spec(m)], ("p@1", "p@5")):
            out.append({"method": m, "baseline": base, "seeds": seeds, **{k: c[k] for k in (
                "metric", "mean_a", "mean_b", "diff", "ci95", "p_ttest", "p_wilcoxon", "n")}})
    return out


def table(rows, tests=()) -> str:
    agg: dict[str, list[dict]] = {}
    for r in rows:
        agg.setdefault(r["method"], []).append(r)
    head = ("| method | seeds | steps | P@1 | P@5 | PSP@5 | PSP@5 range | recall@10 | target_encodes | query_encodes | "
            "seconds | peak RSS MB |")
    out = [head, "|---" * (head.count("|") - 1) + "|"]
    for m, rs in agg.items():
        avg = lambda k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
        psp = [r["psp@5"] for r in rs]
        out.append(f"| {m} | {len(rs)} | {rs[0]['steps']} | {avg('p@1'):.4f} | {avg('p@5'):.4f} | {avg('psp@5'):.4f} | "
                   f"{min(psp):.4f}-{max(psp):.4f} | {avg('recall@10'):.4f} | {avg('target_encodes'):,.0f} | "
                   f"{avg('query_encodes'):,.0f} | {avg('seconds'):.0f} | {avg('peak_rss_mb'):.0f} |")
    if tests:
        out += ["", "| method | vs | metric | diff | 95% CI | p (t) | p (Wilcoxon) | seeds |", "|---|---|---|---|---|---|---|---|"]
        out += [f"| {t['method']} | {t['baseline']} | {t['metric']} | {t['diff']:+.4f} | [{t['ci95'][0]:+.4f}, "
                f"{t['ci95'][1]:+.4f}] | {t['p_ttest']:.3g} | {t['p_wilcoxon']:.3g} | {len(t['seeds'])} |" for t in tests]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=2506, help="steps of the main table (2 epochs of 1,253 batches)")
    ap.add_argument("--all-steps", type=int, default=100, help="steps of the all-labels table (0: skip it)")
    ap.add_argument("--long-steps", type=int, default=6265, help="steps of the in-batch / NGAME pair run longer "
                    "(5 epochs; 0: skip it)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--only", nargs="*", help="run only the rows whose method starts with one of these words")
    args = ap.parse_args(argv)
    ds = shared_dataset("gcide-senses")
    if ds is None:
        return 0
    prov = provenance()
    jf = RESULTS / "xmc.json"
    rows = json.loads(jf.read_text())["rows"] if jf.exists() else []
    key = lambda r: (r["method"], r.get("seed", 0))  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for name, opts, steps in configs(args):
                if args.only and not any(name.startswith(w) for w in args.only):
                    continue
                row = {**run(ds, name, opts, steps, seed, tmp), **prov}
                row["command"] = f"python benchmarks/xmc.py --only '{name}' --seeds {seed}"
                rows = [r for r in rows if key(r) != key(row)] + [row]
                print(table([row]).splitlines()[2], flush=True)
                finish(rows)
    finish(rows)
    return 0


def finish(rows) -> None:
    tests = paired_tests(rows)
    write_result("xmc", {"dataset": "gcide-senses", "rows": rows, "paired": tests})
    atomic_write_text(RESULTS / "xmc.md", table(rows, tests) + "\n")
    print("\n" + table(rows, tests))


if __name__ == "__main__":
    raise SystemExit(main())
