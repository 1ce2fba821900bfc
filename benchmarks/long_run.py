"""Long runs where staleness matters (#29 parts 2 and 3): gradient error, quality and re-encodes per method.

Two questions, one set of runs (same data order, steps and encoder per seed; only the negatives differ):

2. "Error halved" (Monath et al., AISTATS 2023, DyNNIBAL): does the tree with Nystrom (or with the corrector)
   halve the gradient error of stale brute-force mining at equal target encodes? Every ``--diagnose-every``
   steps the run encodes all targets fresh (outside the timed region) and measures, on that step's batch,
   ``grad_rel_error`` = ||g - g*|| / ||g*||: g the gradient w.r.t. the query embeddings of the training loss
   with the method's own draws (fresh embeddings), g* the exact full-softmax one; beside it the TV of the
   method's proposal to the fresh softmax, and the store's staleness.
3. The corrector (Monath et al., ICML 2024) with no re-encoding against ANCE at R in {10, 20, 40, 80}:
   ``reencode_reduction_factor`` = refresh encodes of the cheapest ANCE row whose quality is within the paired
   CI of the best ANCE row, over the corrector's, when the corrector is within the paired CI of that row too
   (null otherwise). Paired tests per test query, seeds averaged per query.

Methods: inbatch; ``exact R=r`` (the softmax over a store re-encoded every r steps, sampled exactly: stale
brute-force mining); ``ance R=r`` (top-k of that store); the cache with fraction refresh (1/40 of the rows per
step: the re-encodes of exact R=40); the cache with no re-encoding at all (the corrector's control); the cache
and the tree with the corrector and no re-encoding; the tree with
Nystrom (768 landmarks every 50 steps, and 8,192 every 20).

Preset ``static``: the static tower on gcide-rd (84K targets, 113K training pairs; batch 64, 8 negatives,
lr 0.01, 2,000 steps, diagnostics every 100). Preset ``minilm``: all-MiniLM-L6-v2 on SciFact for a time budget.

    python benchmarks/long_run.py --seeds 0 1 2
    python benchmarks/long_run.py --methods "ance R=80" "cache + corrector" --seeds 1
    python benchmarks/long_run.py --redraw

Writes benchmarks/results/long_run.json (rows merge by preset, method and seed), long_run.md, long_run.png and
each run's per_query.jsonl.gz under results/long_run_runs/.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, SHARED_DATA, provenance, seeded_main, write_result  # noqa: E402

from negminer.fileio import atomic_write_text  # noqa: E402

PRESETS = {
    "static": dict(data="gcide-rd", encoder="static", batch_size=64, lr=0.01, k=8, qlen=32, tlen=32,
                   budget=["--steps", "2000"], diagnose_every=100),
    "minilm": dict(data="scifact", encoder="minilm", batch_size=16, lr=5e-5, k=4, qlen=32, tlen=48,
                   budget=["--steps", "1000000", "--time-budget", "1800"], diagnose_every=50),
}
COR = ["--refresh", "none", "--corrector"]
METHODS = {
    "inbatch": ["--negatives", "inbatch"],
    **{f"exact R={r}": ["--negatives", "exact", "--refresh-every", str(r)] for r in (10, 20, 40, 80)},
    **{f"ance R={r}": ["--negatives", "ance", "--refresh-every", str(r)] for r in (10, 20, 40, 80)},
    "cache fraction 1/40": ["--negatives", "cache", "--refresh-fraction", "0.025"],
    "cache, no refresh": ["--negatives", "cache", "--refresh", "none"],  # the corrector's control
    "cache + corrector": ["--negatives", "cache", *COR],
    "tree + corrector": ["--negatives", "tree", *COR],
    "tree + nystrom 768/50": ["--negatives", "tree", "--refresh", "write-back,nystrom", "--nystrom-landmarks", "768",
                              "--nystrom-every", "50"],
    "tree + nystrom 8192/20": ["--negatives", "tree", "--refresh", "write-back,nystrom", "--nystrom-landmarks", "8192",
                               "--nystrom-every", "20"],
}
DIAG = ("grad_rel_error", "grad_cosine", "tv", "top10_found", "store_staleness", "stale_logit")


def run_row(preset: str, method: str, seed: int, tmp: str) -> dict:
    p = PRESETS[preset]
    data = os.path.relpath(SHARED_DATA / p["data"], REPO)
    out = Path(tmp) / f"{preset}-{method}-{seed}".replace(" ", "_").replace("/", "-").replace("+", "p").replace(",", "")
    args = ["negminer", "train", "--data", data, "--out", str(out), "--encoder", p["encoder"], "--batch-size",
            str(p["batch_size"]), "--lr", str(p["lr"]), "--query-max-length", str(p["qlen"]), "--target-max-length",
            str(p["tlen"]), *p["budget"], "--seed", str(seed), "--num-negatives", str(p["k"]), "--no-zero-shot",
            "--diagnose-every", str(p["diagnose_every"]), "--quiet", *METHODS[method]]
    r = subprocess.run([sys.executable, "-m", "negminer", *args[1:]], capture_output=True, text=True, cwd=REPO)
    if r.returncode:
        raise RuntimeError(f"{shlex.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    m = json.loads((out / "metrics.json").read_text())
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines() if x.strip()]
    keep = RESULTS / "long_run_runs" / out.name
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "metrics.json", keep / "metrics.json")
    (keep / "per_query.jsonl.gz").write_bytes(gzip.compress((out / "per_query.jsonl").read_bytes(), mtime=0))
    tr = m["train"]
    curve = [{"step": x["step"], **{k: round(x["diagnostics"][k], 5) for k in DIAG if k in x["diagnostics"]}}
             for x in log if "diagnostics" in x]
    late = [c for c in curve if c["step"] > tr["steps"] // 4] or curve  # past warm-up and the first fill

    def mean(key, rows):
        v = [c[key] for c in rows if key in c]
        return round(sum(v) / len(v), 5) if v else None

    return {"preset": preset, "encoder": p["encoder"], "data": p["data"], "method": method, "seed": seed,
            "steps": tr["steps"], "ndcg@10": round(m["ndcg@10"], 4), "recall@10": round(m["recall@10"], 4),
            "target_encodes": tr["target_encodes"], "refresh_encodes": tr.get("refresh_encodes", 0),
            "query_encodes": tr["query_encodes"], "train_seconds": round(tr["seconds"], 1),
            "peak_rss_mb": tr["peak_rss_mb"], **{f"mean_{k}": mean(k, late) for k in DIAG}, "diagnostics": curve,
            # the corrector's own log: mean relative error of the rows it trained on, before and after it
            "corrector_pairs": [{"step": x["step"], "before": round(x["corrector_before"], 5),
                                 "after": round(x["corrector_after"], 5)} for x in log
                                if "corrector_before" in x and x["step"] % 100 == 0],
            "run_dir": str(keep.relative_to(REPO)), **provenance(), "command": shlex.join(args)}


def _runs(rows) -> dict[tuple, dict[str, list[str]]]:
    by: dict[tuple, dict[str, list[str]]] = {}
    for r in rows:
        by.setdefault((r["preset"], r["data"]), {}).setdefault(r["method"], []).append(str(REPO / r["run_dir"]))
    return by


def _seeds(path: str) -> str:
    return path.rsplit("-", 1)[-1]


def paired(a: list[str], b: list[str], metric="ndcg@10") -> dict | None:
    """b - a per query, seeds averaged per query, over the seeds both have."""
    from negminer.eval.compare import compare

    common = sorted({_seeds(x) for x in a} & {_seeds(x) for x in b})
    if not common:
        return None
    pick = lambda runs: ",".join(sorted(x for x in runs if _seeds(x) in common))  # noqa: E731
    c = compare([pick(a), pick(b)], (metric,))[0]
    return {k: c[k] for k in ("metric", "mean_a", "mean_b", "diff", "ci95", "p_ttest", "p_wilcoxon")} | {"seeds": len(common)}


def averaged(rows) -> dict[tuple, dict]:
    agg: dict[tuple, list[dict]] = {}
    for r in rows:
        agg.setdefault((r["preset"], r["method"]), []).append(r)
    out = {}
    for key, rs in agg.items():
        avg = {k: (sum(r[k] for r in rs) / len(rs) if all(isinstance(r.get(k), (int, float)) for r in rs) else None)
               for k in ("ndcg@10", "recall@10", "target_encodes", "refresh_encodes", "train_seconds", "peak_rss_mb",
                         *(f"mean_{d}" for d in DIAG))}
        if key[1] == "inbatch":  # no store: the diagnostics compare an unused, empty one
            avg["mean_store_staleness"] = avg["mean_stale_logit"] = None
        out[key] = {**avg, "seeds": sorted(r["seed"] for r in rs), "data": rs[0]["data"], "encoder": rs[0]["encoder"]}
    return out


def error_vs_exact(avg: dict, preset: str) -> list[dict]:
    """Each method's mean gradient error against stale brute-force mining (exact R) at its refresh encodes: the
    exact rows' error interpolated in log encodes (held at the end rows outside their range)."""
    ex = sorted(((v["refresh_encodes"], v["mean_grad_rel_error"]) for (p, m), v in avg.items()
                 if p == preset and m.startswith("exact") and v["mean_grad_rel_error"] is not None))
    if not ex:
        return []
    out = []
    for (p, m), v in sorted(avg.items()):
        if p != preset or v["mean_grad_rel_error"] is None:
            continue
        e = max(v["refresh_encodes"], 1)
        if e <= ex[0][0]:
            ref, where = ex[0][1], "fewer encodes than every exact row: against the cheapest"
        elif e >= ex[-1][0]:
            ref, where = ex[-1][1], "more encodes than every exact row: against the dearest"
        else:
            i = next(j for j in range(1, len(ex)) if ex[j][0] >= e)
            (e0, y0), (e1, y1) = ex[i - 1], ex[i]
            t = (math.log(e) - math.log(e0)) / (math.log(e1) - math.log(e0))
            ref, where = y0 + t * (y1 - y0), "interpolated"
        out.append({"preset": p, "method": m, "refresh_encodes": round(v["refresh_encodes"]),
                    "grad_rel_error": round(v["mean_grad_rel_error"], 4), "exact_at_encodes": round(ref, 4),
                    "error_ratio": round(v["mean_grad_rel_error"] / ref, 3), "reference": where})
    return out


def reduction(rows, preset: str) -> dict:
    """reencode_reduction_factor of the corrector rows against ANCE (see the module docstring)."""
    runs = next((v for (p, _), v in _runs(rows).items() if p == preset), {})
    avg = averaged(rows)
    ance = [m for m in runs if m.startswith("ance")]
    if not ance:
        return {}
    best = max(ance, key=lambda m: avg[(preset, m)]["ndcg@10"])
    ok = [m for m in ance if m == best or (paired(runs[best], runs[m]) or {"ci95": [-1, -1]})["ci95"][1] >= 0]
    cheapest = min(ok, key=lambda m: avg[(preset, m)]["refresh_encodes"])
    out = {"best_ance": best, "cheapest_ance_at_best": cheapest, "corrector": {}}
    for m in (m for m in runs if "corrector" in m):
        t = paired(runs[cheapest], runs[m])
        if t is None:
            continue
        within = t["ci95"][1] >= 0
        f = avg[(preset, cheapest)]["refresh_encodes"] / max(1, avg[(preset, m)]["refresh_encodes"])
        out["corrector"][m] = {"vs": cheapest, **t, "within_ci": within,
                               "reencode_reduction_factor": round(f, 2) if within else None}
    if "cache, no refresh" in runs:  # the same factor without the corrector: what the sampler alone gives
        t = paired(runs[cheapest], runs["cache, no refresh"])
        f = avg[(preset, cheapest)]["refresh_encodes"] / max(1, avg[(preset, "cache, no refresh")]["refresh_encodes"])
        out["control"] = {"method": "cache, no refresh", "vs": cheapest, **t, "within_ci": t["ci95"][1] >= 0,
                          "reencode_reduction_factor": round(f, 2) if t["ci95"][1] >= 0 else None}
    return out


def tests(rows) -> list[dict]:
    out = []
    for (preset, data), runs in sorted(_runs(rows).items()):
        base = "exact R=40" if "exact R=40" in runs else None
        for m in runs:
            control = "cache, no refresh" if "corrector" in m else None  # what the corrector itself adds
            for b in ("inbatch", base, control):
                if b and m != b and b in runs:
                    t = paired(runs[b], runs[m])
                    if t:
                        out.append({"preset": preset, "data": data, "method": m, "baseline": b, **t})
    return out


def table(rows, paired_rows, errs, red) -> str:
    avg = averaged(rows)
    order = list(METHODS)
    head = ("| encoder | data | method | seeds | ndcg@10 | recall@10 | refresh encodes | target encodes | "
            "grad rel. error | grad cosine | TV | store staleness | train s | peak RSS MB |")
    out = [head, "|---" * (head.count("|") - 1) + "|"]
    f = lambda v, s: "-" if v is None else format(v, s)  # noqa: E731
    for (p, m), v in sorted(avg.items(), key=lambda x: (x[0][0], order.index(x[0][1]) if x[0][1] in order else 99)):
        out.append(f"| {v['encoder']} | {v['data']} | {m} | {len(v['seeds'])} | {v['ndcg@10']:.4f} | {v['recall@10']:.4f} | "
                   f"{v['refresh_encodes']:,.0f} | {v['target_encodes']:,.0f} | {f(v['mean_grad_rel_error'], '.4f')} | "
                   f"{f(v['mean_grad_cosine'], '.4f')} | {f(v['mean_tv'], '.4f')} | {f(v['mean_store_staleness'], '.5f')} | "
                   f"{v['train_seconds']:.0f} | {v['peak_rss_mb']:.0f} |")
    if errs:
        out += ["", "| method | refresh encodes | grad rel. error | exact R at those encodes | ratio | reference |",
                "|---|---|---|---|---|---|"]
        out += [f"| {e['method']} | {e['refresh_encodes']:,} | {e['grad_rel_error']:.4f} | {e['exact_at_encodes']:.4f} | "
                f"{e['error_ratio']:.3f} | {e['reference']} |" for e in errs]
    out += ["", "| data | method | vs | metric | diff | 95% CI | p (t) | p (Wilcoxon) | seeds |", "|---|---|---|---|---|---|---|---|---|"]
    out += [f"| {t['data']} | {t['method']} | {t['baseline']} | {t['metric']} | {t['diff']:+.4f} | "
            f"[{t['ci95'][0]:+.4f}, {t['ci95'][1]:+.4f}] | {t['p_ttest']:.3g} | {t['p_wilcoxon']:.3g} | {t['seeds']} |"
            for t in paired_rows]
    for p, r in red.items():
        if r:
            out += ["", f"{p}: best ANCE {r['best_ance']}; cheapest ANCE within its paired CI: {r['cheapest_ance_at_best']}"]
            out += [f"- {m}: {c['diff']:+.4f} [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] ndcg@10 against it, "
                    f"reencode_reduction_factor {c['reencode_reduction_factor']}"
                    for m, c in [*r["corrector"].items(), *([(r["control"]["method"] + " (control)", r["control"])]
                                                            if "control" in r else [])]]
    return "\n".join(out)


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    avg = averaged(rows)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in ((axes[0], "mean_grad_rel_error", "gradient error ||g - g*|| / ||g*||"),
                           (axes[1], "ndcg@10", "ndcg@10 (test)")):
        for fam, mk in (("exact", "o-"), ("ance", "s-")):
            pts = sorted((v["refresh_encodes"], v[key]) for (p, m), v in avg.items() if m.startswith(fam) and v[key] is not None)
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], mk, label=f"{fam} R")
        for (p, m), v in avg.items():
            if not m.startswith(("exact", "ance")) and v[key] is not None:
                ax.plot([max(v["refresh_encodes"], 1)], [v[key]], "^", label=m)
        ax.set_xscale("log")
        ax.set_xlabel("refresh encodes (fill included)")
        ax.set_ylabel(label)
    axes[1].legend(fontsize=7)
    fig.suptitle("static tower on gcide-rd, 2,000 steps: methods at their re-encode cost", fontsize=9)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


def finish(rows) -> None:
    presets = sorted({r["preset"] for r in rows})
    avg = averaged(rows)
    errs = [e for p in presets for e in error_vs_exact(avg, p)]
    red = {p: reduction(rows, p) for p in presets}
    pt = tests(rows)
    write_result("long_run", {"rows": rows, "error_vs_exact": errs, "reencode_reduction": red, "paired": pt,
                              "presets": PRESETS, "methods": METHODS})
    text = table(rows, pt, errs, red)
    atomic_write_text(RESULTS / "long_run.md", text + "\n")
    if rows:
        plot(rows, RESULTS / "long_run.png")
    print("\n" + text)


def main(argv=None) -> int:
    return seeded_main("long_run", __doc__, PRESETS, METHODS, "static", run_row, finish,
                       lambda r: f"{r['preset']} seed {r['seed']} {r['method']:<24} ndcg@10 {r['ndcg@10']:.4f} "
                       f"refresh encodes {r['refresh_encodes']:,} grad error {r['mean_grad_rel_error']} "
                       f"{r['train_seconds']} s", argv)

if __name__ == "__main__":
    raise SystemExit(main())
