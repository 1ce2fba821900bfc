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

Each row: P@1, P@5, PSP@5 (Extreme Classification Repository definitions, inverse propensities A=0.55,
B=1.5 from the training labels), recall@10, target and query encodes, training seconds, peak RSS.

    python benchmarks/xmc.py                      # both tables
    python benchmarks/xmc.py --only ngame decoupled   # rerun rows whose method starts with these words

Writes benchmarks/results/xmc.json and xmc.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from negminer.fileio import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, merge_rerun, peak_rss_mb, provenance, reset_peak_rss, shared_dataset, write_result  # noqa: E402

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


def run(ds, name, opts, steps, args, tmp) -> dict:
    from negminer.config import resolve
    from negminer.train.trainer import Trainer

    out = Path(tmp) / name.replace(" ", "_").replace("+", "p").replace("@", "at").replace("(", "").replace(")", "")
    cfg = resolve({"data": "", "out": str(out), "steps": steps, "seed": args.seed, **BASE, **opts})
    reset_peak_rss()
    m = Trainer(cfg, dataset=ds).run()
    t = m["train"]
    return {"method": name, "loss": cfg.loss, "batching": cfg.batching, "negatives": cfg.negatives, "steps": steps,
            "options": opts, "p@1": round(m["xmc_p@1"], 4), "p@5": round(m["xmc_p@5"], 4),
            "psp@5": round(m["xmc_psp@5"], 4), "recall@10": round(m["recall@10"], 4), "ndcg@10": round(m["ndcg@10"], 4),
            "target_encodes": t["target_encodes"], "query_encodes": t["query_encodes"], "seconds": t["seconds"],
            "peak_rss_mb": peak_rss_mb()}


def table(rows) -> str:
    head = "| method | steps | P@1 | P@5 | PSP@5 | recall@10 | target_encodes | query_encodes | seconds | peak RSS MB |"
    out = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        out.append(f"| {r['method']} | {r['steps']} | {r['p@1']:.4f} | {r['p@5']:.4f} | {r['psp@5']:.4f} | "
                   f"{r['recall@10']:.4f} | {r['target_encodes']:,} | {r['query_encodes']:,} | {r['seconds']:.0f} | "
                   f"{r['peak_rss_mb']:.0f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=2506, help="steps of the main table (2 epochs of 1,253 batches)")
    ap.add_argument("--all-steps", type=int, default=100, help="steps of the all-labels table (0: skip it)")
    ap.add_argument("--long-steps", type=int, default=6265, help="steps of the in-batch / NGAME pair run longer "
                    "(5 epochs; 0: skip it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="run only the rows whose method starts with one of these words")
    args = ap.parse_args(argv)
    ds = shared_dataset("gcide-senses")
    if ds is None:
        return 0
    prov = provenance()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, opts, steps in configs(args):
            if args.only and not any(name.startswith(w) for w in args.only):
                continue
            rows.append({**run(ds, name, opts, steps, args, tmp), **prov})
            print(table([rows[-1]]).splitlines()[2], flush=True)
    if args.only:
        rows = merge_rerun(rows, "xmc")
    write_result("xmc", {"dataset": "gcide-senses", "rows": rows})
    atomic_write_text(RESULTS / "xmc.md", table(rows) + "\n")
    print("\n" + table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
