"""Negative samplers compared on real data, one process, same seed, steps and encoder.

Per method: recall@10, ndcg@10 (test split), target-encoder forward passes (training encodes of
positives and drawn negatives plus every refresh/fill of the store), query encodes, training wall
time, peak RSS of the method's run, and at the end the sampler diagnostics against the exact softmax
with fresh embeddings (TV, KL, exact top-10 found, gradient relative error and cosine).

    python benchmarks/negatives.py --preset static     # static tower on gcide-rd (84K targets)
    python benchmarks/negatives.py --preset minilm     # MiniLM on SciFact, shorter budget
    python benchmarks/negatives.py --redraw            # table and plot from the JSON only

Writes benchmarks/results/negatives.json (rows of every preset run so far are kept, keyed by
method and encoder), negatives.md (table) and negatives.png (quality against target encodes).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
from pathlib import Path

from negminer.fileio import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SHARED_DATA, peak_rss_mb, provenance, reset_peak_rss, write_result  # noqa: E402

PRESETS = {
    "static": dict(data="gcide-rd", encoder="static", steps=300, batch_size=64, lr=0.01, k=8, qlen=32, tlen=32,
                   exact_every=10, ance_every=100, stream=8192, diag_batches=2, nystrom_every=50),
    "minilm": dict(data="scifact", encoder="minilm", steps=40, batch_size=16, lr=5e-5, k=4, qlen=32, tlen=48,
                   exact_every=10, ance_every=10, stream=256, diag_batches=1, regimes=False, nystrom_every=10),
}


def methods(p) -> list[tuple[str, dict]]:
    k = p["k"]
    base = [
        ("zero-shot", {"zero_shot_only": True}),  # the initial model, evaluated with the same lengths
        ("inbatch", {"negatives": "inbatch"}),
        ("uniform", {"negatives": "uniform", "num_negatives": k}),
        (f"ance (R={p['ance_every']})", {"negatives": "ance", "num_negatives": k, "refresh_every": p["ance_every"]}),
        ("cache (drawn only)", {"negatives": "cache", "num_negatives": k}),
        ("cache (refresh 1%)", {"negatives": "cache", "num_negatives": k, "refresh_fraction": 0.01}),
        ("cache-stream (fifo)", {"negatives": "cache-stream", "num_negatives": k, "cache_size": p["stream"]}),
        (f"exact (R={p['exact_every']})", {"negatives": "exact", "num_negatives": k, "refresh_every": p["exact_every"]}),
        # the dynamic tree (exact draws from the softmax over the whole store) and Nystrom updates of stale rows
        ("tree", {"negatives": "tree", "num_negatives": k}),
        ("tree + nystrom", {"negatives": "tree", "num_negatives": k, "refresh": "auto,nystrom",
                            "nystrom_every": p["nystrom_every"]}),
        ("cache + nystrom", {"negatives": "cache", "num_negatives": k, "refresh": "auto,nystrom",
                             "nystrom_every": p["nystrom_every"]}),
        # the corrector network (ICML 2024) rewriting every cached row from its last encoding
        ("cache + corrector", {"negatives": "cache", "num_negatives": k, "corrector": True,
                               "corrector_every": max(1, p["nystrom_every"] // 2)}),
    ]
    if not p.get("regimes", True):
        return base
    return base + [
        # regimes where sampled hard negatives may pay: softer sampling, a margin against false negatives
        ("cache 1%, tau_s=0.1", {"negatives": "cache", "num_negatives": k, "refresh_fraction": 0.01,
                                 "sample_temperature": 0.1}),
        ("cache 1%, margin 0.1", {"negatives": "cache", "num_negatives": k, "refresh_fraction": 0.01, "margin": 0.1}),
        ("cache surrogate 1%", {"negatives": "cache", "num_negatives": k, "refresh_fraction": 0.01,
                                "loss": "cache-surrogate", "inbatch": False}),
        # approximate top-K prefilter: sample among the IVF index's K best (sqrt(N) lists); all lists
        # probed = exact top-K, to tell truncation from index error
        ("cache 1%, IVF top-256", {"negatives": "cache", "num_negatives": k, "refresh_fraction": 0.01,
                                   "prefilter_top": 256, "prefilter_nprobe": 8}),
        ("cache 1%, exact top-256", {"negatives": "cache", "num_negatives": k, "refresh_fraction": 0.01,
                                     "prefilter_top": 256, "prefilter_nprobe": 10**6}),
        ("cache 1%, IVF top-4096", {"negatives": "cache", "num_negatives": k, "refresh_fraction": 0.01,
                                    "prefilter_top": 4096, "prefilter_nprobe": 32}),
    ]


def diagnosis_step(opts, p) -> int:
    """Where to diagnose: after the last step, or for samplers refreshed every R steps (exact, ance) in the
    middle of the last period, so that a just-refreshed index is never what is measured."""
    r = opts.get("refresh_every") if opts.get("negatives") in ("exact", "ance") else None
    return p["steps"] - r // 2 if r and r > 1 else p["steps"]


def row_command(name, args) -> str:
    cmd = ["python", "benchmarks/negatives.py", "--preset", args.preset, "--seed", str(args.seed), "--only", f"'{name}'"]
    if args.steps:
        cmd += ["--steps", str(args.steps)]
    return " ".join(cmd)


def run_method(ds, name, opts, p, args, tmp):
    from negminer.config import resolve
    from negminer.hooks import DiagnosticsHook
    from negminer.train.trainer import Trainer

    cfg = resolve({"data": "", "out": str(Path(tmp) / name.replace(" ", "_").replace("/", "")), "encoder": p["encoder"],
                   "steps": p["steps"], "batch_size": p["batch_size"], "lr": p["lr"], "seed": args.seed,
                   "query_max_length": p["qlen"], "target_max_length": p["tlen"], "quiet": True,
                   "zero_shot": False, **{k: v for k, v in opts.items() if k != "zero_shot_only"}})
    at = diagnosis_step(opts, p)
    hook = DiagnosticsHook(at=[at], batches=p["diag_batches"]) if p["diag_batches"] else None
    reset_peak_rss()
    tr = Trainer(cfg, dataset=ds, hooks=[hook] if hook else [])
    if opts.get("zero_shot_only"):
        m = dict(tr.evaluate(), train={"target_encodes": 0, "query_encodes": 0, "seconds": 0.0})
    else:
        m = tr.run()
    row = {"method": name, "encoder": p["encoder"], "data": ds.name, "steps": 0 if "zero_shot_only" in opts else p["steps"],
           "recall@10": round(m["recall@10"], 4), "ndcg@10": round(m["ndcg@10"], 4),
           "target_encodes": m["train"]["target_encodes"], "query_encodes": m["train"]["query_encodes"],
           "seconds": m["train"]["seconds"], "peak_rss_mb": peak_rss_mb(), "options": opts,
           **provenance(), "command": row_command(name, args)}
    if "zero_shot_only" not in opts:
        log = _log(tr)
        falls = [r["tree_fallback"] for r in log if "tree_fallback" in r]  # steps the tree drew by the exact pass
        if falls:
            row["tree_fallback_rate"] = round(sum(falls) / len(falls), 4)
    if hook and "zero_shot_only" not in opts:
        logged = [r["diagnostics"] for r in _log(tr) if "diagnostics" in r]
        if logged:
            row["diagnostics"] = {k: round(v, 4) for k, v in logged[-1].items()}
            row["diagnosed_at_step"] = at
    return row


def _log(tr):
    return [json.loads(x) for x in (tr.run_dir / "train_log.jsonl").read_text().splitlines() if x.strip()]


DIAG_COLUMNS = (("tv", ".3f"), ("top10_found", ".2f"), ("grad_cosine", ".3f"), ("store_staleness", ".4f"))


def table(rows) -> str:
    head = ("| encoder | data | method | steps | recall@10 | ndcg@10 | target_encodes | seconds | peak RSS MB | TV | "
            "top10 found | grad cos | store staleness |")
    out = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        d = r.get("diagnostics") or {}
        out.append(f"| {r['encoder']} | {r['data']} | {r['method']} | {r['steps']} | {r['recall@10']:.4f} | "
                   f"{r['ndcg@10']:.4f} | {r['target_encodes']:,} | {r['seconds']:.0f} | {r['peak_rss_mb']:.0f} | "
                   + " | ".join(f"{d[k]:{f}}" if k in d else "-" for k, f in DIAG_COLUMNS) + " |")
    return "\n".join(out)


def plot(rows, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    encoders = sorted({r["encoder"] for r in rows})
    fig, axes = plt.subplots(1, len(encoders), figsize=(6.5 * len(encoders), 4.8), squeeze=False)
    for ax, enc in zip(axes[0], encoders):
        mine = [r for r in rows if r["encoder"] == enc]
        zs = [r["recall@10"] for r in mine if r["method"] == "zero-shot"]
        pts = [r for r in mine if r["method"] != "zero-shot"]  # zero-shot: 0 encodes, in the title
        span = (max(r["recall@10"] for r in pts) - min(r["recall@10"] for r in pts)) or 1.0
        placed = []  # (log10 x, y, label offset): labels of nearby points are stacked downwards
        for r in pts:
            x, y = r["target_encodes"], r["recall@10"]
            ax.scatter(x, y, s=30)
            dy = 3
            while any(abs(math.log10(x) - px) < 0.3 and abs(y - py) < 0.04 * span and dy == pdy
                      for px, py, pdy in placed):
                dy -= 9
            placed.append((math.log10(x), y, dy))
            ax.annotate(r["method"], (x, y), fontsize=7, xytext=(3, dy), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("target-encoder forward passes")
        ax.set_ylabel("recall@10 (test)")
        ax.set_title(f"{enc} tower on {mine[0]['data']}" + (f" (zero-shot {zs[0]:.3f})" if zs else ""))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=list(PRESETS), default="static")
    ap.add_argument("--steps", type=int, help="override the preset's steps")
    ap.add_argument("--only", nargs="*", help="run only these method names")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--redraw", action="store_true", help="only rebuild negatives.md and .png from the JSON")
    args = ap.parse_args(argv)
    if args.redraw:
        return redraw(sorted(json.loads((RESULTS / "negatives.json").read_text())["rows"], key=order))
    p = dict(PRESETS[args.preset])
    if args.steps:
        p["steps"] = args.steps
    data = SHARED_DATA / p["data"]
    if not data.exists():
        print(f"skipped: {data} not found (the shared/ folder beside the repo)")
        return 0
    from negminer.data import load_dataset

    ds = load_dataset(data)
    new = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, opts in methods(p):
            if args.only and name not in args.only:
                continue
            t = time.perf_counter()
            row = run_method(ds, name, opts, p, args, tmp)
            new.append(row)
            print(f"{name:<24} recall@10 {row['recall@10']:.4f}  ndcg@10 {row['ndcg@10']:.4f}  "
                  f"target_encodes {row['target_encodes']:>10,}  {row['seconds']:.0f}s train, "
                  f"{time.perf_counter() - t:.0f}s total  {row.get('diagnostics', '')}", flush=True)
    old = []
    jf = RESULTS / "negatives.json"
    if jf.exists():
        old = [r for r in json.loads(jf.read_text()).get("rows", [])
               if (r["method"], r["encoder"]) not in {(n["method"], n["encoder"]) for n in new}]
    rows = sorted(old + new, key=order)
    write_result("negatives", {"rows": rows, "presets": PRESETS})
    return redraw(rows)


def order(r):
    """Static rows first, then each preset's rows in the order of ``methods``."""
    names = [re.sub(r" \(R=\d+\)", "", n) for n, _ in methods(PRESETS["static"])]
    m = re.sub(r" \(R=\d+\)", "", r["method"])
    return r["encoder"] != "static", r["encoder"], names.index(m) if m in names else len(names)


def redraw(rows) -> int:
    atomic_write_text(RESULTS / "negatives.md", table(rows) + "\n")
    plot(rows, RESULTS / "negatives.png")
    print("\n" + table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
