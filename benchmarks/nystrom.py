"""Staleness and quality with and without the Nystrom refresher, at equal target encodes, in real training.

MiniLM on SciFact (../shared/data/scifact), the negative cache (k = 4 per query, batch 16), one seed,
``--steps`` steps. Three ways to spend the store's refresh budget:

  write-back only     the drawn rows and positives are written back (no other refresh),
  fraction f          plus f of the store re-encoded per step (oldest first), f chosen so that it
                      re-encodes as many targets as the Nystrom row's landmarks,
  nystrom m/T         plus m landmarks re-encoded every T steps and a linear map fitted on them
                      applied to every other row (refreshers/nystrom.py).

At the steps in ``--measure`` (mid-period by default, so a just-refreshed store is not what is
measured) every target is re-encoded outside the run and compared with the store:
``store_staleness`` (mean ||cached - fresh||^2 / ||fresh||^2), ``stale_logit`` (mean |logit error| in
nats over a batch of queries), and the sampler's TV to the exact softmax with fresh embeddings.
Then recall@10 / ndcg@10 on the test split, target and query encodes, seconds.

    python benchmarks/nystrom.py                    # 40 steps, measured at 5, 15, 25, 35
    python benchmarks/nystrom.py --steps 80 --every 20 --measure 10 30 50 70
    python benchmarks/nystrom.py --only nystrom        # rerun one row, keep the others

Writes benchmarks/results/nystrom.json (rows with method, curve, metrics, commit, command) and nystrom.md.
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

BASE = dict(encoder="minilm", batch_size=16, lr=5e-5, negatives="cache", num_negatives=4, query_max_length=32,
            target_max_length=48, quiet=True, zero_shot=False)


def configs(steps: int, every: int, landmarks: int, n: int) -> list[tuple[str, dict]]:
    frac = landmarks * (steps // every) / (steps * n)  # the same re-encodes as the landmarks
    return [("write-back only", {"refresh": "auto"}),
            (f"fraction {frac:.4f}", {"refresh": "auto", "refresh_fraction": round(frac, 6)}),
            (f"nystrom {landmarks}/{every}", {"refresh": "auto,nystrom", "nystrom_landmarks": landmarks,
                                             "nystrom_every": every})]


def run(ds, name, opts, args, tmp) -> dict:
    from negminer.config import resolve
    from negminer.hooks import DiagnosticsHook
    from negminer.train.trainer import Trainer

    cfg = resolve({"data": "", "out": str(Path(tmp) / name.replace(" ", "_").replace("/", "-")), "steps": args.steps,
                   "seed": args.seed, **BASE, **opts})
    reset_peak_rss()
    tr = Trainer(cfg, dataset=ds, hooks=[DiagnosticsHook(at=args.measure)])
    m = tr.run()
    log = [json.loads(x) for x in (tr.run_dir / "train_log.jsonl").read_text().splitlines() if x.strip()]
    curve = diagnostics_curve(log)
    held = []  # the refresher's held-out landmark staleness, once per update (the log repeats it until the next)
    for r in log:
        if "nystrom_before" in r and (not held or (held[-1]["before"], held[-1]["after"]) !=
                                      (round(r["nystrom_before"], 5), round(r["nystrom_after"], 5))):
            held.append({"step": r["step"], "before": round(r["nystrom_before"], 5), "after": round(r["nystrom_after"], 5),
                         "ridge": r.get("nystrom_ridge"), "applied": r.get("nystrom_applied")})
    return {"method": name, "options": opts, "steps": args.steps, "recall@10": round(m["recall@10"], 4),
            "ndcg@10": round(m["ndcg@10"], 4), "target_encodes": m["train"]["target_encodes"],
            "query_encodes": m["train"]["query_encodes"], "seconds": m["train"]["seconds"],
            "peak_rss_mb": peak_rss_mb(), "curve": curve, "nystrom_held_out": held,
            "mean_store_staleness": round(sum(c["store_staleness"] for c in curve) / max(1, len(curve)), 5),
            "mean_stale_logit": round(sum(c["stale_logit"] for c in curve) / max(1, len(curve)), 5)}


def table(rows) -> str:
    head = ("| method | target_encodes | recall@10 | ndcg@10 | store staleness (mean) | logit error, nats (mean) | "
            "TV at the last measure | seconds |")
    out = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        tv = r["curve"][-1]["tv"] if r["curve"] else float("nan")
        out.append(f"| {r['method']} | {r['target_encodes']:,} | {r['recall@10']:.4f} | {r['ndcg@10']:.4f} | "
                   f"{r['mean_store_staleness']:.5f} | {r['mean_stale_logit']:.4f} | {tv:.3f} | {r['seconds']:.0f} |")
    out += ["", "| method | " + " | ".join(f"step {c['step']}" for c in rows[0]["curve"]) + " |",
            "|---" * (len(rows[0]["curve"]) + 1) + "|"]
    for r in rows:
        out.append(f"| {r['method']} | " + " | ".join(f"{c['store_staleness']:.5f} / {c['stale_logit']:.3f}"
                                                     for c in r["curve"]) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--every", type=int, default=10, help="Nystrom period T")
    ap.add_argument("--landmarks", type=int, default=768, help="Nystrom landmarks m (2 x MiniLM's 384)")
    ap.add_argument("--measure", nargs="*", type=int, help="steps to measure staleness at (default mid-period)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="run only the rows whose method starts with one of these words")
    args = ap.parse_args(argv)
    args.measure = args.measure or list(range(args.every // 2, args.steps, args.every))
    ds = shared_dataset("scifact")
    if ds is None:
        return 0
    prov = provenance()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, opts in configs(args.steps, args.every, args.landmarks, ds.num_targets):
            if args.only and not any(name.startswith(w) for w in args.only):
                continue
            row = {**run(ds, name, opts, args, tmp), **prov}
            rows.append(row)
            print(table([row]).splitlines()[2], flush=True)
    if args.only:  # keep the other rows of the last full run, in its order
        rows = merge_rerun(rows, "nystrom")
    write_result("nystrom", {"rows": rows})
    atomic_write_text(RESULTS / "nystrom.md", table(rows) + "\n")
    print("\n" + table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
