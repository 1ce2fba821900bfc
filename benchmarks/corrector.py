"""Quality against target encodes: ANCE-style full refreshes against the cache with a corrector network.

MiniLM on SciFact (../shared/data/scifact), batch 16, k = 4 negatives per query, one seed, ``--steps``
steps, the same encoder, data and budget for every row:

  ance R=r                  the index over all targets re-encoded every r steps (several r),
  cache (write-back)        the negative cache, the drawn rows and positives re-encoded and written back
                            (MiniLM has dropout: write-back re-encodes them in eval mode, counted),
  cache (no refresh)        the cache as filled at step 0, never re-encoded,
  cache + corrector (no refresh)  the same, plus the corrector network (refreshers/corrector.py), trained
                            on the training forward of positives and drawn rows, rewriting every row
                            every ``--every`` steps: no target encode after the fill,
  cache + corrector, full R the corrector with a rare full re-encode (every ``--rare`` steps).

Every row records target_encodes (the fill included), recall@10 / ndcg@10 on the test split and
seconds. For the two rows without refresh, with and without the corrector, the store's staleness (mean ||cached - fresh||^2 / ||fresh||^2
with every target re-encoded outside the run) is measured at ``--measure`` and plotted.
``reencode_reduction_factor``: the target encodes ANCE needs for its best quality (its cheapest row
within ``--tolerance`` ndcg@10 of its best) over the fewest encodes of a corrector row within the same
tolerance of that best (null when none is).

    python benchmarks/corrector.py                     # 40 steps, ANCE R = 10, 20, 40
    python benchmarks/corrector.py --only cache        # rerun the rows whose method starts with 'cache'

Writes benchmarks/results/corrector.json, corrector.md and corrector.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from negminer.fileio import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, diagnostics_curve, merge_rerun, peak_rss_mb, provenance, reset_peak_rss,  # noqa: E402
                    shared_dataset, write_result)

BASE = dict(encoder="minilm", batch_size=16, lr=5e-5, num_negatives=4, query_max_length=32, target_max_length=48,
            quiet=True, zero_shot=False)


def configs(args) -> list[tuple[str, dict, bool]]:
    """(method, options, measure staleness)."""
    cor = {"corrector": True, "corrector_every": args.every, "corrector_warmup": args.warmup}
    ance = [(f"ance R={r}", {"negatives": "ance", "refresh_every": r}, False) for r in args.ance]
    rows = [("cache (write-back)", {"negatives": "cache", "refresh": "write-back"}, False),
             ("cache (no refresh)", {"negatives": "cache", "refresh": "none"}, True),
             ("cache + corrector (no refresh)", {"negatives": "cache", "refresh": "none", **cor}, True),
             (f"cache + corrector, full R={args.rare}", {"negatives": "cache", "refresh": "full",
                                                          "refresh_every": args.rare, **cor}, False)]
    return rows + ance


def run(ds, name, opts, measure, args, tmp) -> dict:
    from negminer.config import resolve
    from negminer.hooks import DiagnosticsHook
    from negminer.train.trainer import Trainer

    cfg = resolve({"data": "", "out": str(Path(tmp) / name.replace(" ", "_").replace("/", "-").replace(",", "")),
                   "steps": args.steps, "seed": args.seed, **BASE, **opts})
    reset_peak_rss()
    tr = Trainer(cfg, dataset=ds, hooks=[DiagnosticsHook(at=args.measure)] if measure else [])
    m = tr.run()
    log = [json.loads(x) for x in (tr.run_dir / "train_log.jsonl").read_text().splitlines() if x.strip()]
    curve = diagnostics_curve(log)
    drift = [{"step": r["step"], "before": round(r["corrector_before"], 5), "after": round(r["corrector_after"], 5)}
             for r in log if "corrector_before" in r]
    return {"method": name, "options": opts, "steps": args.steps, "target_encodes": m["train"]["target_encodes"],
            "query_encodes": m["train"]["query_encodes"], "recall@10": round(m["recall@10"], 4),
            "ndcg@10": round(m["ndcg@10"], 4), "seconds": m["train"]["seconds"], "peak_rss_mb": peak_rss_mb(),
            "staleness_curve": curve, "corrector_pairs": drift}


def reduction(rows, tolerance: float):
    ance = [r for r in rows if r["method"].startswith("ance")]
    cor = [r for r in rows if "corrector" in r["method"]]
    if not ance or not cor:
        return None, None
    top = max(r["ndcg@10"] for r in ance)  # ANCE's best quality, and the fewest encodes that reach it
    best = min((r for r in ance if r["ndcg@10"] >= top - tolerance), key=lambda r: r["target_encodes"])
    ok = [r for r in cor if r["ndcg@10"] >= top - tolerance]
    if not ok:
        return None, best["method"]
    cheapest = min(ok, key=lambda r: r["target_encodes"])
    return round(best["target_encodes"] / cheapest["target_encodes"], 2), best["method"]


def table(rows) -> str:
    head = "| method | target_encodes | recall@10 | ndcg@10 | seconds | store staleness (mean) |"
    out = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        c = r["staleness_curve"]
        st = f"{sum(x['store_staleness'] for x in c) / len(c):.4f}" if c else "-"
        out.append(f"| {r['method']} | {r['target_encodes']:,} | {r['recall@10']:.4f} | {r['ndcg@10']:.4f} | "
                   f"{r['seconds']:.0f} | {st} |")
    measured = [r for r in rows if r["staleness_curve"]]
    if measured:
        steps = [c["step"] for c in measured[0]["staleness_curve"]]
        out += ["", "| store staleness at step | " + " | ".join(map(str, steps)) + " |", "|---" * (len(steps) + 1) + "|"]
        for r in measured:
            out.append(f"| {r['method']} | " + " | ".join(f"{c['store_staleness']:.4f}" for c in r["staleness_curve"]) + " |")
    return "\n".join(out)


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for r in rows:
        if r["staleness_curve"]:
            c = r["staleness_curve"]
            ax.plot([x["step"] for x in c], [x["store_staleness"] for x in c], marker="o", label=r["method"])
    ax.set_xlabel("step")
    ax.set_ylabel("store staleness ||cached - fresh||² / ||fresh||²")
    ax.set_title("MiniLM on SciFact: a never-refreshed cache, with and without the corrector", fontsize=9)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--ance", nargs="*", type=int, default=[10, 20, 40], help="ANCE refresh periods R")
    ap.add_argument("--every", type=int, default=5, help="corrector: steps between rewrites of every row")
    ap.add_argument("--warmup", type=int, default=5, help="corrector: steps before its outputs are used")
    ap.add_argument("--rare", type=int, default=20, help="full re-encode period of the last row")
    ap.add_argument("--measure", nargs="*", type=int, help="steps to measure staleness at (default 8, 18, ...)")
    ap.add_argument("--tolerance", type=float, default=0.005, help="ndcg@10 within this of the best ANCE row 'matches'")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="run only the rows whose method starts with one of these words")
    ap.add_argument("--redraw", action="store_true", help="only rebuild the factor, corrector.md and .png from the JSON")
    args = ap.parse_args(argv)
    args.measure = args.measure or list(range(8, args.steps, 10))
    if args.redraw:
        d = json.loads((RESULTS / "corrector.json").read_text())
        return finish(d["rows"], args.tolerance)
    ds = shared_dataset("scifact")
    if ds is None:
        return 0
    prov = provenance()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, opts, measure in configs(args):
            if args.only and not any(name.startswith(w) for w in args.only):
                continue
            rows.append({**run(ds, name, opts, measure, args, tmp), **prov})
            print(table([rows[-1]]).splitlines()[2], flush=True)
    if args.only:  # keep the other rows of the last run, in its order
        rows = merge_rerun(rows, "corrector")
    return finish(rows, args.tolerance)


def finish(rows, tolerance: float) -> int:
    factor, best = reduction(rows, tolerance)
    write_result("corrector", {"rows": rows, "reencode_reduction_factor": factor, "best_ance": best,
                               "tolerance_ndcg@10": tolerance})
    atomic_write_text(RESULTS / "corrector.md", table(rows) + f"\n\nreencode_reduction_factor: {factor} "
                      f"(against {best}, ndcg@10 within {tolerance})\n")
    plot(rows, RESULTS / "corrector.png")
    print("\n" + table(rows) + f"\n\nreencode_reduction_factor: {factor} (against {best})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
