"""The training loop: batches -> towers -> sampler -> loss -> optimiser, with counters,
checkpoints that resume bit-for-bit, periodic evaluation and a progress bar.

Determinism: the batch of a step, the positive drawn for each query and the torch RNG used by
dropout are all functions of (seed, step), and the checkpoint stores model, optimiser, scheduler
position and every RNG; so a run resumed after a kill reproduces the uninterrupted loss curve.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from negminer.batching import RandomBatcher
from negminer.config import TrainConfig, save_config
from negminer.errors import ConfigError
from negminer.losses import build_loss
from negminer.samplers import Batch, Draw, build_sampler, inbatch_mask
from negminer.store import TargetStore
from negminer.train.duplicates import duplicate_groups
from negminer.train.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from negminer.train.io import atomic_write_json, atomic_write_text, read_jsonl

from negminer.eval.metrics import METRIC_KEYS  # noqa: E402


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / (1024 * 1024) if sys.platform == "darwin" else kb / 1024, 1)


@dataclass
class Counters:
    """Sequences passed through each tower during training (evaluation is not counted here)."""

    query_encodes: int = 0
    target_encodes: int = 0


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def linear_schedule(warmup_steps: int, total_steps: int):
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return f


class Trainer:
    """Composes data, towers, sampler, loss and optimiser for one run directory."""

    def __init__(self, cfg: TrainConfig, dataset=None, model=None):
        from negminer.data.load import load_dataset
        from negminer.encoders import build_encoder

        self.cfg = cfg
        self.run_dir = Path(cfg.out)
        self.device = pick_device(cfg.device)
        self.dataset = dataset if dataset is not None else load_dataset(cfg.data)
        torch.manual_seed(cfg.seed)
        self.model = model if model is not None else build_encoder(
            cfg.encoder, shared=cfg.shared, pooling=cfg.pooling, normalize=cfg.normalize,
            temperature=cfg.temperature, learn_temperature=cfg.learn_temperature,
            query_max_length=cfg.query_max_length, target_max_length=cfg.target_max_length,
            device=str(self.device))
        self.model.to(self.device)
        pos = self.dataset.positives(cfg.train_split)
        self.qids = sorted(pos, key=lambda q: self.dataset.query_index[q])
        self.pos_sets = [pos[q] for q in self.qids]
        self.pos_lists = [sorted(pos[q]) for q in self.qids]
        self.query_texts = [self.dataset.query_texts[self.dataset.query_index[q]] for q in self.qids]
        self.target_inputs = self.dataset.target_inputs()
        self.batcher = RandomBatcher(len(self.qids), cfg.batch_size, cfg.seed)
        self.total_steps = cfg.total_steps(self.batcher.batches_per_epoch)
        self.sampler = build_sampler(cfg)
        self.loss_fn = build_loss(cfg.loss)
        self.dups = duplicate_groups(self.target_inputs) if cfg.dedupe_text else {}
        self.store = None
        if self.sampler.k or cfg.diagnose_every:
            self.store = TargetStore(self.dataset.target_ids, self.target_inputs, self.model.dim,
                                     dtype=cfg.store_dtype, path=cfg.store_path or None)
        decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
        warm = int(cfg.warmup * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, linear_schedule(warm, self.total_steps))
        self.counters = Counters()
        self.step = 0
        self.seconds = 0.0

    # ---- one step -------------------------------------------------------------------------
    def _batch(self, step: int):
        idx = self.batcher.batch(step)
        rng = np.random.default_rng([self.cfg.seed, step, 29])
        pos_rows = [self.pos_lists[i][rng.integers(len(self.pos_lists[i]))] for i in idx]
        return idx, pos_rows

    def exclude(self, i: int) -> set[int]:
        """Rows never used as negatives for example i: its positives and targets with the same text."""
        ex = set(self.pos_sets[i])
        for r in self.pos_sets[i]:
            ex.update(self.dups.get(r, ()))
        return ex

    def make_batch(self, step: int, idx, pos_rows, pos_emb) -> Batch:
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step + 500_009)
        return Batch(step, torch.as_tensor(pos_rows, dtype=torch.long), [self.exclude(i) for i in idx],
                     pos_emb.detach().float().cpu(), g, float(self.model.logit_scale().detach()))

    def compute_loss(self, q, p, batch: Batch, draw: Draw, neg):
        scale = self.model.logit_scale()
        if self.cfg.loss == "cache-surrogate":
            if neg is None:  # nothing cached yet (a stream's first step): no gradient signal
                return (q.sum() + p.sum()) * 0.0
            return self.loss_fn(q, p, scale, neg=neg, neg_mask=draw.mask.to(q.device), log_z=draw.log_z.to(q.device))
        pool_mask = inbatch_mask(batch.pos_rows.tolist(), batch.exclude).to(q.device) if self.cfg.inbatch else None
        return self.loss_fn(q, p, scale, pool=p if self.cfg.inbatch else None, pool_mask=pool_mask, neg=neg,
                            neg_mask=draw.mask.to(q.device) if neg is not None else None,
                            log_q=draw.log_q.to(q.device) if (neg is not None and draw.log_q is not None) else None)

    def target_features(self, rows):
        """Tower inputs of target rows: from the store's token table when there is a store."""
        if self.store is not None:
            return self.store.features(rows, self.model)
        return self.model.tokenize_targets([self.target_inputs[int(r)] for r in rows])

    def encode_drawn(self, ids: torch.Tensor):
        """Fresh, with-gradient embeddings [B, k, d] of the drawn rows (each distinct row encoded once)."""
        uniq, inv = ids.unique(return_inverse=True)
        feats = self.target_features(uniq)
        self.counters.target_encodes += len(uniq)
        return self.model.embed_targets(feats)[inv.to(self.device)]

    def train_step(self, step: int) -> float:
        """One optimiser step; returns the loss."""
        torch.manual_seed(self.cfg.seed * 1_000_003 + step)  # dropout etc.: a function of the step
        idx, pos_rows = self._batch(step)
        m, dev = self.model, self.device
        qf = m.tokenize_queries([self.query_texts[i] for i in idx])
        tf = self.target_features(pos_rows)
        amp = torch.autocast(dev.type, dtype=torch.bfloat16) if self.cfg.bf16 else nullcontext()
        with amp:
            q = m.embed_queries(qf)
            p = m.embed_targets(tf)
        self.counters.query_encodes += len(idx)
        self.counters.target_encodes += len(pos_rows)
        batch = self.make_batch(step, idx, pos_rows, p)
        draw = self.sampler.sample(q.detach().float().cpu(), batch, self.store) if self.sampler.k else Draw.empty(len(idx))
        neg = None
        if draw.ids.numel():
            with amp:
                neg = self.encode_drawn(draw.ids)
        loss = self.compute_loss(q, p, batch, draw, neg)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(m.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        if self.store is not None:
            self.sampler.update(batch, draw, None if neg is None else neg.detach().float().cpu(), m, self.store, step + 1)
        return float(loss.detach())

    def work(self) -> dict:
        """Counters for logs: target_encodes includes the store's refresh encodes."""
        refresh = self.store.target_encodes if self.store is not None else 0
        return {"query_encodes": self.counters.query_encodes, "target_encodes": self.counters.target_encodes + refresh,
                "refresh_encodes": refresh}

    # ---- evaluation -----------------------------------------------------------------------
    def evaluate(self) -> dict:
        from negminer.eval.evaluate import evaluate

        return evaluate(self.model, self.dataset, split=self.cfg.eval_split,
                        batch_size=self.cfg.eval_batch_size, progress=not self.cfg.quiet)

    # ---- run directory --------------------------------------------------------------------
    def _state(self) -> dict:
        epoch, batch = self.batcher.position(self.step)
        return {"step": self.step, "epoch": epoch, "batch_in_epoch": batch, "total_steps": self.total_steps,
                "scheduler_last_epoch": self.scheduler.last_epoch, "seconds": self.seconds,
                "counters": vars(self.counters).copy(), "seed": self.cfg.seed,
                "store_encodes": self.store.target_encodes if self.store is not None else 0}

    def extra_tensors(self) -> dict:
        t = dict(self.sampler.state()[0])
        if self.store is not None:
            t.update(self.store.state_tensors())
        return t

    def save(self) -> None:
        save_checkpoint(self.run_dir, self.model, self.optimizer, self._state(), self.extra_tensors())

    def resume(self) -> bool:
        ckpt = find_checkpoint(self.run_dir)
        if ckpt is None:
            return False
        st, extra = load_checkpoint(ckpt, self.model, self.optimizer)
        self.step, self.seconds = st["step"], st["seconds"]
        if self.store is not None:
            self.store.load_state_tensors(extra, st.get("store_encodes", 0))
        self.sampler.load_state(extra, {})
        self.counters = Counters(**st["counters"])
        self.scheduler.last_epoch = st["scheduler_last_epoch"]
        for g, lr0, f in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            g["lr"] = lr0 * f(self.scheduler.last_epoch)
        # drop log rows written after the checkpoint (the run was killed between checkpoints)
        rows = [r for r in read_jsonl(self.run_dir / "train_log.jsonl") if r.get("step", 0) <= self.step]
        atomic_write_text(self.run_dir / "train_log.jsonl", "".join(_jsonl(r) for r in rows))
        return True

    def _log(self, row: dict) -> None:
        with open(self.run_dir / "train_log.jsonl", "a", encoding="utf-8") as f:
            f.write(_jsonl(row))

    def run(self, resume: bool = False) -> dict:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resumed = self.resume() if resume else False
        if resume and not resumed and not cfg.quiet:
            print(f"no checkpoint in {self.run_dir}: starting from scratch", file=sys.stderr)
        if not resumed:
            (self.run_dir / "train_log.jsonl").unlink(missing_ok=True)
        save_config(cfg, self.run_dir)
        zs_path = self.run_dir / "zero_shot.json"
        zero_shot = None
        if cfg.zero_shot:
            if zs_path.exists():
                import json

                zero_shot = json.loads(zs_path.read_text())
            else:
                zero_shot = self.evaluate()
                atomic_write_json(zs_path, zero_shot)
                if not cfg.quiet:
                    print("zero-shot: " + _fmt(zero_shot), file=sys.stderr)
        if self.store is not None:
            self.sampler.setup(self.store, self.model, self.step)
        self.model.train()
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_steps, initial=self.step, disable=cfg.quiet, desc="train", unit="step",
                   dynamic_ncols=True)
        t0 = time.perf_counter() - self.seconds
        last_eval = None
        pause = float(os.environ.get("NEGMINER_STEP_SLEEP", "0"))  # tests: widen the window for a kill
        while self.step < self.total_steps:
            loss = self.train_step(self.step)
            if pause:
                time.sleep(pause)
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {self.step}; lower --lr or use fp32")
            self.step += 1
            self.seconds = time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            row = None
            if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                row = {"step": self.step, "loss": round(loss, 6), "lr": self.scheduler.get_last_lr()[0],
                       "seconds": round(self.seconds, 3), **self.work(), "peak_rss_mb": peak_rss_mb(),
                       **{k: round(v, 6) for k, v in self.sampler.last_stats.items()}}
            if cfg.diagnose_every and self.step % cfg.diagnose_every == 0:
                from negminer.diagnostics import diagnose_trainer

                row = dict(row or {"step": self.step}, diagnostics=diagnose_trainer(self, self.step))
                self.model.train()
                t0 = time.perf_counter() - self.seconds
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < self.total_steps:
                last_eval = self.evaluate()
                self.model.train()
                row = dict(row or {"step": self.step}, eval=last_eval)
                t0 = time.perf_counter() - self.seconds  # evaluation time is not training time
            if row:
                self._log(row)
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < self.total_steps:
                self.save()
        bar.close()
        self.save()
        self.model.save(self.run_dir / "model")
        final = self.evaluate()
        metrics = {k: final[k] for k in METRIC_KEYS}
        if zero_shot is not None:
            metrics["zero_shot"] = {k: zero_shot[k] for k in METRIC_KEYS}
        metrics["train"] = {"steps": self.step, **self.work(), "seconds": round(self.seconds, 2),
                            "negatives": cfg.negatives, "loss": cfg.loss,
                            "peak_rss_mb": peak_rss_mb(), "split": cfg.eval_split}
        atomic_write_json(self.run_dir / "metrics.json", metrics)
        return metrics


def _jsonl(row: dict) -> str:
    import json

    return json.dumps(row) + "\n"


def _fmt(m: dict) -> str:
    return "  ".join(f"{k} {m[k]:.4f}" for k in METRIC_KEYS if k != "num_queries")


def format_comparison(metrics: dict) -> str:
    """Zero-shot vs trained, one line per metric."""
    zs = metrics.get("zero_shot")
    lines = [f"{'metric':<12}{'zero-shot':>11}{'trained':>10}{'change':>10}"]
    for k in METRIC_KEYS[:-1]:
        if zs:
            lines.append(f"{k:<12}{zs[k]:>11.4f}{metrics[k]:>10.4f}{metrics[k] - zs[k]:>+10.4f}")
        else:
            lines.append(f"{k:<12}{'-':>11}{metrics[k]:>10.4f}")
    lines.append(f"queries: {metrics['num_queries']}   steps: {metrics['train']['steps']}   "
                 f"query_encodes: {metrics['train']['query_encodes']}   "
                 f"target_encodes: {metrics['train']['target_encodes']}   "
                 f"train seconds: {metrics['train']['seconds']}   peak RSS MB: {metrics['train']['peak_rss_mb']}")
    return "\n".join(lines)
