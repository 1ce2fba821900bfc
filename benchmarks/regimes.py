"""Where do sampled hard negatives pay? In-batch against the negative cache, varying one thing at a time.

The hyper-parameters of a preset of ``negatives.py`` (``static``: batch 64, 8 sampled negatives per
query, lr 0.01; the same seed everywhere), varying:

- training length: 100, 300 and 1000 steps on gcide-rd;
- targets seen in training or not: gcide-rd test queries split by whether their headword is a
  positive of some training query (45.6% are); metrics per subset from the same run;
- multi-positive data: gcide-senses (headword -> all its definitions, 1-50 positives);
- equal wall time: in-batch run for about as long as the cache took (2-3x the steps), static tower on
  gcide-rd and MiniLM on SciFact (the ``minilm`` preset: 40 steps of 16, 4 negatives per query);
- hard or just more: uniform negatives, as many as the cache draws, with the same corrections.

    python benchmarks/regimes.py            # all
    python benchmarks/regimes.py --only steps

Writes benchmarks/results/regimes.json and regimes.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from negminer.fileio import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SHARED_DATA, peak_rss_mb, provenance, reset_peak_rss, write_result  # noqa: E402
from negatives import PRESETS  # noqa: E402

METHODS = {
    "inbatch": {"negatives": "inbatch"},
    "uniform": {"negatives": "uniform"},
    "cache (refresh 1%)": {"negatives": "cache", "refresh_fraction": 0.01},  # k from the preset
}
# axis -> cells (data, steps, preset of negatives.py, methods)
GRID = {
    "steps": [("gcide-rd", s, "static", ["inbatch", "cache (refresh 1%)"]) for s in (100, 300, 1000)],
    "multi-positive": [("gcide-senses", 300, "static", ["inbatch", "cache (refresh 1%)"])],
    # in-batch given about the wall time the cache took (2-3x its steps)
    "equal time": [("gcide-rd", 2000, "static", ["inbatch"]), ("gcide-rd", 3000, "static", ["inbatch"]),
                   ("scifact", 40, "minilm", ["inbatch", "cache (refresh 1%)"]), ("scifact", 120, "minilm", ["inbatch"])],
    # hard or just more: the same number of uniform negatives, with the same corrections
    "hardness": [("gcide-rd", s, "static", ["uniform"]) for s in (300, 1000)]
    + [("gcide-senses", 300, "static", ["uniform"]), ("scifact", 40, "minilm", ["uniform"])],
}


def seen_split(ds) -> dict[str, set[str]]:
    """Test query ids whose positives were all / none positives of a training query."""
    train_targets = {t for ps in ds.positives("train").values() for t in ps}
    out: dict[str, set[str]] = {"seen": set(), "unseen": set()}
    for q, ps in ds.positives("test").items():
        if ps.keys() <= train_targets:
            out["seen"].add(q)
        elif not ps.keys() & train_targets:
            out["unseen"].add(q)
    return out


def run_one(ds, method, steps, preset, tmp, seed):
    from negminer.config import resolve
    from negminer.eval.evaluate import EvalMetrics, retrieve
    from negminer.eval.metrics import compute_metrics
    from negminer.train.trainer import Trainer

    p = PRESETS[preset]
    opts = dict(METHODS[method], **({"num_negatives": p["k"]} if method != "inbatch" else {}))
    cfg = resolve({"data": "", "out": str(Path(tmp) / f"{ds.name}-{steps}-{method.split()[0]}"), "encoder": p["encoder"],
                   "steps": steps, "batch_size": p["batch_size"], "lr": p["lr"], "seed": seed,
                   "query_max_length": p["qlen"], "target_max_length": p["tlen"], "quiet": True,
                   "zero_shot": False, **opts})
    reset_peak_rss()
    tr = Trainer(cfg, dataset=ds)
    kept = {}

    def evaluate(out_dir=None):  # keep the run so that subsets are scored without a second encode
        kept["run"] = retrieve(tr.model, ds, "test", batch_size=cfg.eval_batch_size)
        return EvalMetrics(compute_metrics(kept["run"], ds.qrels["test"]))

    tr.evaluate = evaluate
    m = tr.run()
    row = {"data": ds.name, "encoder": p["encoder"], "method": method, "steps": steps, "recall@10": round(m["recall@10"], 4),
           "ndcg@10": round(m["ndcg@10"], 4), "target_encodes": m["train"]["target_encodes"],
           "query_encodes": m["train"]["query_encodes"], "seconds": m["train"]["seconds"],
           "peak_rss_mb": peak_rss_mb()}
    if ds.name == "gcide-rd":
        for name, qids in seen_split(ds).items():
            sub = compute_metrics(kept["run"], {q: r for q, r in ds.qrels["test"].items() if q in qids})
            row[f"recall@10 {name}"] = round(sub["recall@10"], 4)
            row[f"queries {name}"] = sub["num_queries"]
    return row


def table(rows) -> str:
    head = ("| encoder | data | steps | method | recall@10 | ndcg@10 | recall@10 seen | recall@10 unseen | target_encodes | "
            "seconds | peak RSS MB |")
    out = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        seen = f"{r['recall@10 seen']:.4f}" if "recall@10 seen" in r else "-"
        unseen = f"{r['recall@10 unseen']:.4f}" if "recall@10 unseen" in r else "-"
        out.append(f"| {r.get('encoder', 'static')} | {r['data']} | {r['steps']} | {r['method']} | {r['recall@10']:.4f} | {r['ndcg@10']:.4f} | "
                   f"{seen} | {unseen} | {r['target_encodes']:,} | {r['seconds']:.0f} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=list(GRID), nargs="*")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from negminer.data import load_dataset

    rows, cache = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for axis, cells in GRID.items():
            if args.only and axis not in args.only:
                continue
            for data, steps, preset, methods in cells:
                path = SHARED_DATA / data
                if not path.exists():
                    print(f"skipped {data}: {path} not found (the shared/ folder beside the repo)")
                    continue
                ds = cache.setdefault(data, load_dataset(path))
                for method in methods:
                    t = time.perf_counter()
                    row = {**run_one(ds, method, steps, preset, tmp, args.seed), "axis": axis, **provenance(),
                           "command": f"python benchmarks/regimes.py --only '{axis}' --seed {args.seed}"}
                    rows.append(row)
                    print(f"{data:<13} {steps:>5} {method:<20} recall@10 {row['recall@10']:.4f} "
                          f"({time.perf_counter() - t:.0f}s)  {row}", flush=True)
    if rows:  # rows of cells not run now are kept
        jf, key = RESULTS / "regimes.json", (lambda r: (r["data"], r["steps"], r["method"]))
        done = {key(r) for r in rows}
        old = [r for r in json.loads(jf.read_text())["rows"] if key(r) not in done] if jf.exists() else []
        rank = {m: i for i, m in enumerate(METHODS)}
        rows = sorted(old + rows, key=lambda r: (r.get("encoder", "static") != "static", r["data"], r["steps"],
                                                 rank.get(r["method"], len(rank))))
        write_result("regimes", {"rows": rows, "methods": METHODS, "presets": PRESETS})
        atomic_write_text(RESULTS / "regimes.md", table(rows) + "\n")
        print("\n" + table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
