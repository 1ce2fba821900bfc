"""The tree's two modes in training against the cache, at equal steps, with seeds (#29).

The cache (drawn rows written back, no extra refresh) draws exactly from the softmax over the stale store by
one pass; the tree in ``exact`` mode draws the same distribution (an exact pass when its bounds are loose);
in ``proposal`` mode it never passes over the store and corrects by its proposal's exact probabilities, as does
``descend`` mode (the leaf reached by walking down the tree). Same
seed, data order, steps and encoder for all three, so per-query paired tests (seeds averaged per query) say
whether the proposal loses quality per step. Presets:

- minilm: all-MiniLM-L6-v2 on SciFact (batch 16, 4 negatives, lr 5e-5, 40 steps, as negatives.py);
- static: the static tower on gcide-rd (84K targets; batch 64, 8 negatives, lr 0.01, 300 steps).

Per row: ndcg@10, recall@10, steps, target and query encodes, training seconds, the sampler's ms per step,
peak RSS, the tree's fallback rate and (proposal) its mean TV estimate.

    python benchmarks/tree_training.py --preset minilm --seeds 0 1 2
    python benchmarks/tree_training.py --redraw

Writes benchmarks/results/tree_training.json (rows merge by preset, method and seed), tree_training.md and
each run's per_query.jsonl.gz and metrics.json under results/tree_training_runs/.
"""

from __future__ import annotations

import gzip
import json
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
    "minilm": dict(data="scifact", encoder="minilm", batch_size=16, lr=5e-5, k=4, qlen=32, tlen=48, steps=40),
    "static": dict(data="gcide-rd", encoder="static", batch_size=64, lr=0.01, k=8, qlen=32, tlen=32, steps=300),
}
METHODS = {
    "cache": ["--negatives", "cache"],
    "tree": ["--negatives", "tree"],
    "tree proposal": ["--negatives", "tree", "--tree-mode", "proposal"],
    "tree descend": ["--negatives", "tree", "--tree-mode", "descend"],
}


def run_row(preset: str, method: str, seed: int, tmp: str) -> dict:
    p = PRESETS[preset]
    data = os.path.relpath(SHARED_DATA / p["data"], REPO)
    out = Path(tmp) / f"{preset}-{method}-{seed}".replace(" ", "_")
    args = ["negminer", "train", "--data", data, "--out", str(out), "--encoder", p["encoder"], "--batch-size",
            str(p["batch_size"]), "--lr", str(p["lr"]), "--query-max-length", str(p["qlen"]), "--target-max-length",
            str(p["tlen"]), "--steps", str(p["steps"]), "--seed", str(seed), "--num-negatives", str(p["k"]),
            "--no-zero-shot", "--log-every", "1", "--quiet", *METHODS[method]]
    r = subprocess.run([sys.executable, "-m", "negminer", *args[1:]], capture_output=True, text=True, cwd=REPO)
    if r.returncode:
        raise RuntimeError(f"{shlex.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    m = json.loads((out / "metrics.json").read_text())
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines() if x.strip()]
    keep = RESULTS / "tree_training_runs" / out.name
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "metrics.json", keep / "metrics.json")
    (keep / "per_query.jsonl.gz").write_bytes(gzip.compress((out / "per_query.jsonl").read_bytes(), mtime=0))
    tr = m["train"]

    def mean(key):
        v = [x[key] for x in log if key in x]
        return round(sum(v) / len(v), 4) if v else None

    return {"preset": preset, "encoder": p["encoder"], "data": p["data"], "method": method, "seed": seed,
            "steps": tr["steps"], "ndcg@10": round(m["ndcg@10"], 4), "recall@10": round(m["recall@10"], 4),
            "target_encodes": tr["target_encodes"], "query_encodes": tr["query_encodes"],
            "train_seconds": round(tr["seconds"], 1), "sample_ms_per_step": round(tr["phases"]["sample"] / max(1, tr["steps"]) * 1000, 1),
            "peak_rss_mb": tr["peak_rss_mb"], "tree_fallback_rate": mean("tree_fallback"), "tree_tv": mean("tree_tv"),
            "run_dir": str(keep.relative_to(REPO)), **provenance(), "command": shlex.join(args)}


def paired_tests(rows) -> list[dict]:
    from negminer.eval.compare import compare

    by: dict[tuple, dict[str, list[str]]] = {}
    for r in rows:
        by.setdefault((r["preset"], r["data"]), {}).setdefault(r["method"], []).append(str(REPO / r["run_dir"]))
    out = []
    for (preset, data), runs in sorted(by.items()):
        for m, rs in runs.items():
            if m == "cache" or "cache" not in runs or len(rs) != len(runs["cache"]):
                continue
            for c in compare([",".join(sorted(runs["cache"])), ",".join(sorted(rs))], ("recall@10", "ndcg@10")):
                out.append({"preset": preset, "data": data, "method": m, "baseline": "cache", "seeds": len(rs),
                            **{k: c[k] for k in ("metric", "mean_a", "mean_b", "diff", "ci95", "p_ttest", "p_wilcoxon")}})
    return out


def table(rows, tests) -> str:
    agg: dict[tuple, list[dict]] = {}
    for r in rows:
        agg.setdefault((r["preset"], r["data"], r["method"]), []).append(r)
    head = ("| encoder | data | method | seeds | steps | ndcg@10 | recall@10 | target encodes | sampler ms/step | "
            "train s | fallback rate | TV estimate |")
    out = [head, "|---" * (head.count("|") - 1) + "|"]
    for (preset, data, m), rs in sorted(agg.items(), key=lambda x: (x[0][0], list(METHODS).index(x[0][2]))):
        avg = lambda k: sum(r[k] for r in rs) / len(rs) if all(r.get(k) is not None for r in rs) else None  # noqa: E731
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        out.append(f"| {rs[0]['encoder']} | {data} | {m} | {len(rs)} | {avg('steps'):.0f} | {avg('ndcg@10'):.4f} | "
                   f"{avg('recall@10'):.4f} | {avg('target_encodes'):,.0f} | {avg('sample_ms_per_step'):.1f} | "
                   f"{avg('train_seconds'):.0f} | {fmt(avg('tree_fallback_rate'), '.2f')} | {fmt(avg('tree_tv'), '.3f')} |")
    out += ["", "| data | method | vs | metric | diff | 95% CI | p (t) | p (Wilcoxon) | seeds |", "|---|---|---|---|---|---|---|---|---|"]
    for t in tests:
        out.append(f"| {t['data']} | {t['method']} | {t['baseline']} | {t['metric']} | {t['diff']:+.4f} | "
                   f"[{t['ci95'][0]:+.4f}, {t['ci95'][1]:+.4f}] | {t['p_ttest']:.3g} | {t['p_wilcoxon']:.3g} | {t['seeds']} |")
    return "\n".join(out)


def finish(rows) -> None:
    tests = paired_tests(rows)
    write_result("tree_training", {"rows": rows, "paired": tests, "presets": PRESETS, "methods": METHODS})
    atomic_write_text(RESULTS / "tree_training.md", table(rows, tests) + "\n")
    print("\n" + table(rows, tests))


def main(argv=None) -> int:
    return seeded_main("tree_training", __doc__, PRESETS, METHODS, "minilm", run_row, finish,
                       lambda r: f"{r['preset']} seed {r['seed']} {r['method']:<14} steps {r['steps']} "
                       f"ndcg@10 {r['ndcg@10']:.4f} sample {r['sample_ms_per_step']} ms/step", argv)

if __name__ == "__main__":
    raise SystemExit(main())
