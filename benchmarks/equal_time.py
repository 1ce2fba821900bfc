"""Hard negatives at equal wall time: does any of them beat in-batch and mine-once-then-train?

Every row is one `negminer train --time-budget B` run (evaluation not counted; the same machine,
one run at a time), so methods that step slower get fewer steps. Presets:

- static: the static tower on gcide-rd (batch 64, 8 negatives per query, lr 0.01);
- minilm: all-MiniLM-L6-v2 on SciFact (batch 16, 4 negatives per query, lr 5e-5).

Methods: in-batch; mine-once (`negminer mine` with the starting model, FlagEmbedding's default range:
ranks 10-210, then k per step drawn from each query's list, shared across the batch as
sentence-transformers' MultipleNegativesRankingLoss and FlagEmbedding do; the mining time is taken
from the budget); the negative cache (1% refreshed per step); the cache with shared negatives; the
cache with --negative-grad none; the streaming cache; the combination of the last two ideas; and the
streaming cache as a memory bank (XBM, MoCo: recent positives' embeddings as they were computed in
training, 32 negatives per query drawn from them with no target-tower work). Rows named "... amp" run
every forward under bf16 autocast (--bf16) and are also tested against "inbatch amp"; "cache k/2 amp"
is the cheap cache step of #28 (k/2 negatives, write-back of the training forward, no extra refresh).
Constant learning rate after a fixed warm-up for all (a time budget has no known last step).

    python benchmarks/equal_time.py --preset static --budgets 60 180 --seeds 0
    python benchmarks/equal_time.py --preset minilm --budgets 120 --seeds 0 1 2 --methods inbatch mine-once
    python benchmarks/equal_time.py --preset minilm --budgets 120 --seeds 0 1 2 --curve-points 0 --methods "inbatch amp" "cache k/2 amp"
    python benchmarks/equal_time.py --redraw     # table, paired tests and plot from the JSON

Writes benchmarks/results/equal_time.json (rows, paired tests), equal_time.md, equal_time.png, and
each run's per_query.jsonl.gz, metrics.json and train_log.jsonl under results/equal_time_runs/ (so that
`negminer compare` can be run on them).
"""

from __future__ import annotations

import argparse
import gzip
import json
import shlex
import shutil
import subprocess
import sys
import os
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, SHARED_DATA, provenance, write_result  # noqa: E402

from negminer.fileio import atomic_write_text  # noqa: E402
from negminer.train.phases import PHASES  # noqa: E402

PRESETS = {
    "static": dict(data="gcide-rd", encoder="static", batch_size=64, lr=0.01, k=8, qlen=32, tlen=32, warmup=30,
                   stream=8192, bank=8192, bank_k=32),
    "minilm": dict(data="scifact", encoder="minilm", batch_size=16, lr=5e-5, k=4, qlen=32, tlen=48, warmup=4,
                   stream=256, bank=1024, bank_k=32),
}
MINE = dict(skip=10, top_k=200)
AMP, TRAIN_WB = ["--bf16"], ["--write-back", "train"]  # FlagEmbedding's hn_mine default range_for_sampling 10-210


def methods(p) -> dict[str, list[str]]:
    k = ["--num-negatives", str(p["k"])]
    cache = ["--negatives", "cache", *k, "--refresh-fraction", "0.01"]
    return {
        "inbatch": [],
        "mine-once": ["--negatives", "mined", *k, "--share-negatives"],  # + --mined-file
        "cache": cache,
        "cache+share": [*cache, "--share-negatives"],
        "cache grad-none": [*cache, "--negative-grad", "none"],
        "cache-stream": ["--negatives", "cache-stream", *k, "--cache-size", str(p["stream"])],
        "cache grad-none+share": [*cache, "--negative-grad", "none", "--share-negatives"],
        # the same with the store in bf16: scoring the store is the sampler's cost (AMX / AVX512-BF16 here)
        "cache bf16": [*cache, "--store-dtype", "bf16"],
        "cache-stream bf16": ["--negatives", "cache-stream", *k, "--cache-size", str(p["stream"]), "--store-dtype", "bf16"],
        "cache grad-none bf16": [*cache, "--negative-grad", "none", "--store-dtype", "bf16"],
        # a memory bank (XBM, MoCo): the queue holds the positives' training-mode embeddings of the last steps,
        # negatives are drawn from it and used as cached, so they cost no target-tower work at all
        "stream bank": ["--negatives", "cache-stream", "--num-negatives", str(p["bank_k"]), "--cache-size",
                        str(p["bank"]), "--negative-grad", "none", "--write-back", "train"],
        # bf16 autocast for every forward (--bf16; "bf16" above is the store's dtype), and the cheap cache steps
        # of #28: write-back of the training forward's embeddings (no eval-mode re-encode), fewer negatives
        "inbatch amp": AMP,
        "cache amp": [*cache, *AMP, *TRAIN_WB],
        "cache k/2 amp": ["--negatives", "cache", "--num-negatives", str(p["k"] // 2), "--refresh-fraction", "0",
                          *AMP, *TRAIN_WB],
        "cache k1 amp": ["--negatives", "cache", "--num-negatives", "1", "--refresh-fraction", "0.005", *AMP, *TRAIN_WB],
        "cache grad-none amp": [*k, "--negatives", "cache", "--refresh-fraction", "0.005", "--negative-grad", "none",
                                *AMP, *TRAIN_WB],
    }


def train_args(p, data, out, budget, seed, extra, eval_every=0.0) -> list[str]:
    return ["negminer", "train", "--data", str(data), "--out", str(out), "--encoder", p["encoder"],
            "--batch-size", str(p["batch_size"]), "--lr", str(p["lr"]), "--query-max-length", str(p["qlen"]),
            "--target-max-length", str(p["tlen"]), "--time-budget", str(budget), "--steps", "1000000",
            "--schedule", "constant", "--warmup", str(p["warmup"]), "--seed", str(seed), "--no-zero-shot",
            "--log-every", "25", "--eval-every-seconds", str(eval_every), "--quiet", *extra] + (
                ["--dev-split", "test", "--select-metric", "none"] if eval_every else [])  # the curve on test, no selection


def run(argv: list[str]) -> float:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "negminer", *argv[1:]], capture_output=True, text=True, cwd=REPO)
    if r.returncode:
        raise RuntimeError(f"{shlex.join(argv)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return time.perf_counter() - t


def run_row(preset, method, budget, seed, tmp, eval_every) -> dict:
    """One row; commands are relative to the repository root (runs/equal_time/ is git-ignored)."""
    p = PRESETS[preset]
    data = os.path.relpath(SHARED_DATA / p["data"], REPO)
    out = Path(tmp) / f"{preset}-{method}-{budget}-{seed}".replace(" ", "_").replace("+", "_").replace("/", "-")
    extra, cmds, mine_s = list(methods(p)[method]), [], 0.0
    if method == "mine-once":
        neg = Path(tmp) / f"mined-{preset}.jsonl"
        mine = ["negminer", "mine", "--model", p["encoder"], "--data", str(data), "--out", str(neg),
                "--top-k", str(MINE["top_k"]), "--skip", str(MINE["skip"]), "--quiet"]
        run(mine)
        mine_s = json.loads((REPO / f"{neg}.meta.json").read_text())["seconds"]
        cmds.append(shlex.join(mine))
        extra += ["--mined-file", str(neg)]
    if budget - mine_s <= 0:  # mining alone spent the budget: the starting model is what the user has
        args = ["negminer", "eval", "--model", p["encoder"], "--data", str(data), "--out", str(out), "--quiet"]
        run(args)
        m = json.loads((REPO / out / "metrics.json").read_text())
        m["train"] = {"steps": 0, "target_encodes": 0, "query_encodes": 0, "seconds": 0.0, "peak_rss_mb": None,
                      "phases": {p_: 0.0 for p_ in PHASES}}
        (REPO / out / "train_log.jsonl").write_text("")
    else:
        args = train_args(p, data, out, round(budget - mine_s, 2), seed, extra, eval_every)
        run(args)
        m = json.loads((REPO / out / "metrics.json").read_text())
    cmds.append(shlex.join(args))
    out = REPO / out
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    tr = m["train"]
    if method == "mine-once":  # the mining pass encoded every target and every training query
        meta = json.loads((REPO / f"{neg}.meta.json").read_text())
        tr["target_encodes"] += meta["targets"]
        tr["query_encodes"] += meta["queries"]
    curve = [{"seconds": round(r["seconds"] + mine_s, 1), "step": r["step"], "recall@10": round(r["eval"]["recall@10"], 4),
              "ndcg@10": round(r["eval"]["ndcg@10"], 4)} for r in log if "eval" in r]
    curve.append({"seconds": round(tr["seconds"] + mine_s, 1), "step": tr["steps"], "recall@10": round(m["recall@10"], 4),
                  "ndcg@10": round(m["ndcg@10"], 4)})
    keep = RESULTS / "equal_time_runs" / out.name
    keep.mkdir(parents=True, exist_ok=True)
    for f in ("metrics.json", "train_log.jsonl"):
        shutil.copy(out / f, keep / f)
    (keep / "per_query.jsonl.gz").write_bytes(gzip.compress((out / "per_query.jsonl").read_bytes(), mtime=0))
    return {"encoder": p["encoder"], "data": p["data"], "method": method, "budget_s": budget, "seed": seed,
            "steps": tr["steps"], "recall@10": round(m["recall@10"], 4), "ndcg@10": round(m["ndcg@10"], 4),
            "target_encodes": tr["target_encodes"], "query_encodes": tr["query_encodes"],
            "train_seconds": tr["seconds"], "mine_seconds": mine_s, "peak_rss_mb": tr["peak_rss_mb"],
            "phases": tr["phases"], "drawn_age": next((r["drawn_age"] for r in reversed(log) if "drawn_age" in r), None),
            "curve": curve, "run_dir": str(keep.relative_to(RESULTS.parent.parent)), **provenance(),
            "command": " && ".join(cmds)}


def paired_tests(rows) -> list[dict]:
    """Each method against in-batch and mine-once at the same (encoder, data, budget), seeds averaged per query."""
    from negminer.eval.compare import compare

    groups: dict[tuple, dict[str, list[str]]] = {}
    for r in rows:
        groups.setdefault((r["encoder"], r["data"], r["budget_s"]), {}).setdefault(r["method"], []).append(
            str(RESULTS.parent.parent / r["run_dir"]))
    out = []
    for (enc, data, budget), by in sorted(groups.items()):
        for base in ("inbatch", "mine-once", "inbatch amp"):  # bf16-autocast rows also against in-batch in bf16
            if base not in by:
                continue
            for m, runs in by.items():
                if m == base or len(runs) != len(by[base]) or (base == "inbatch amp" and not m.endswith(" amp")):
                    continue
                for c in compare([",".join(sorted(by[base])), ",".join(sorted(runs))], ("recall@10", "ndcg@10")):
                    out.append({"encoder": enc, "data": data, "budget_s": budget, "baseline": base, "method": m,
                                "seeds": len(runs), **{k: c[k] for k in ("metric", "mean_a", "mean_b", "diff", "ci95",
                                                                         "p_ttest", "p_wilcoxon", "n")}})
    return out




def table(rows, tests) -> str:
    agg: dict[tuple, list[dict]] = {}
    for r in rows:
        agg.setdefault((r["encoder"], r["data"], r["budget_s"], r["method"]), []).append(r)
    head = ("| encoder | data | budget s | method | seeds | steps | recall@10 | ndcg@10 | target encodes | "
            + " | ".join(PHASES) + " |")
    out = [head, "|---" * (head.count("|") - 1) + "|"]
    for (enc, data, b, m), rs in sorted(agg.items(), key=lambda x: (x[0][0], x[0][1], x[0][2], order(x[0][3]))):
        avg = lambda k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
        steps = avg("steps")
        per = {p: sum(r["phases"].get(p, 0) for r in rs) / len(rs) for p in PHASES}
        ph = " | ".join(f"{per[p]:.1f}" if p == "setup" else f"{per[p] / max(steps, 1) * 1000:.1f}" for p in PHASES)
        out.append(f"| {enc} | {data} | {b} | {m} | {len(rs)} | {steps:,.0f} | {avg('recall@10'):.4f} | "
                   f"{avg('ndcg@10'):.4f} | {avg('target_encodes'):,.0f} | {ph} |")
    out += ["", "Phases: setup in seconds, the others in ms per step (mean over seeds). Paired tests across queries (seeds averaged per query):", "",
            "| encoder | data | budget s | method | vs | metric | diff | 95% CI | p (t) | p (Wilcoxon) | seeds |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in tests:
        out.append(f"| {t['encoder']} | {t['data']} | {t['budget_s']} | {t['method']} | {t['baseline']} | {t['metric']} | "
                   f"{t['diff']:+.4f} | [{t['ci95'][0]:+.4f}, {t['ci95'][1]:+.4f}] | {t['p_ttest']:.2g} | "
                   f"{t['p_wilcoxon']:.2g} | {t['seeds']} |")
    return "\n".join(out)


def order(m):
    names = list(methods(PRESETS["static"]))
    return names.index(m) if m in names else len(names)


def plot(rows, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["encoder"], r["data"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, (enc, data) in zip(axes[0], panels):
        metric = "recall@10" if enc == "static" else "ndcg@10"
        mine = [r for r in rows if (r["encoder"], r["data"]) == (enc, data)]
        for i, m in enumerate(sorted({r["method"] for r in mine}, key=order)):
            rs = [r for r in mine if r["method"] == m and r["seed"] == min(x["seed"] for x in mine)]
            pts = sorted({(c["seconds"], c[metric]) for r in rs for c in r["curve"]})
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=m, color=f"C{i}")
        ax.set_xlabel("training wall time, s (evaluation not counted; mining counted)")
        ax.set_ylabel(f"{metric} (test)")
        ax.set_title(f"{enc} on {data}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def finish(rows) -> None:
    tests = paired_tests(rows)
    write_result("equal_time", {"rows": rows, "paired": tests, "presets": PRESETS, "mine": MINE})
    atomic_write_text(RESULTS / "equal_time.md", table(rows, tests) + "\n")
    plot(rows, RESULTS / "equal_time.png")
    print("\n" + table(rows, tests))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=list(PRESETS), default="static")
    ap.add_argument("--budgets", type=float, nargs="+", default=[60, 180])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--methods", nargs="+", help="default: all")
    ap.add_argument("--curve-points", type=int, default=4, help="evaluations within each run (at equal training times)")
    ap.add_argument("--redraw", action="store_true", help="only rebuild the table, tests and plot from the JSON")
    args = ap.parse_args(argv)
    jf = RESULTS / "equal_time.json"
    old = json.loads(jf.read_text())["rows"] if jf.exists() else []
    if args.redraw:
        finish(old)
        return 0
    p = PRESETS[args.preset]
    if not (SHARED_DATA / p["data"]).exists():
        print(f"skipped: {SHARED_DATA / p['data']} not found (the shared/ folder beside the repo)")
        return 0
    names = args.methods or list(methods(p))
    bad = [m for m in names if m not in methods(p)]
    if bad:
        ap.error(f"unknown method {bad[0]!r}; choose from {', '.join(methods(p))}")
    budgets = [int(b) if float(b).is_integer() else b for b in sorted(args.budgets)]
    rows = []
    tmp = Path("runs") / "equal_time"
    shutil.rmtree(REPO / tmp, ignore_errors=True)
    for budget in budgets:
        for seed in args.seeds:
            for m in names:
                ev = round(budget / (args.curve_points + 1), 1) if args.curve_points else 0
                row = run_row(args.preset, m, budget, seed, tmp, ev)
                rows.append(row)
                print(f"{p['encoder']:<7} {budget:>5} s  seed {seed}  {m:<22} steps {row['steps']:>6}  "
                      f"recall@10 {row['recall@10']:.4f}  ndcg@10 {row['ndcg@10']:.4f}  "
                      f"phases {row['phases']}", flush=True)
                key = lambda r: (r["encoder"], r["data"], r["method"], r["budget_s"], r["seed"])  # noqa: E731
                done = {key(r) for r in rows}
                finish([r for r in old if key(r) not in done] + rows)  # keep what is done if killed later
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
