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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from negminer.batching import build_batcher
from negminer.config import TrainConfig, save_config
from negminer.errors import ConfigError, TrainingDiverged
from negminer.fileio import atomic_write_json, atomic_write_text, read_jsonl, remove_stale_temps
from negminer.hooks import default_hooks
from negminer.losses import build_loss
from negminer.memory import encode_cached
from negminer.pipeline import all_inputs, loss_inputs
from negminer.refreshers import Fresh, build_refreshers
from negminer.samplers import Batch, Draw, Exclusions, build_sampler
from negminer.store import TargetStore
from negminer.train.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from negminer.train.duplicates import duplicate_groups
from negminer.train.phases import PhaseTimer

from negminer.eval.metrics import METRIC_KEYS  # noqa: E402


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / (1024 * 1024) if sys.platform == "darwin" else kb / 1024, 1)


@dataclass
class Counters:
    """Sequences passed through each tower during training (evaluation is not counted here)."""

    query_encodes: int = 0
    target_encodes: int = 0
    skipped_steps: int = 0


def tower_norm_ratio(model) -> dict:
    """{"grad_norm_ratio": ||grad of the query tower|| / ||grad of the target tower||} (separate towers; {}
    while the target tower has no gradient)."""
    def norm(mod):
        g = [p.grad.detach().float().norm() for p in mod.parameters() if p.grad is not None]
        return float(torch.stack(g).norm()) if g else 0.0

    t = norm(model.target_tower)
    return {"grad_norm_ratio": norm(model.query_tower) / t} if t > 0 else {}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def has_dropout(module: torch.nn.Module) -> bool:
    """True if the module has an active dropout (its training forward is not deterministic)."""
    for m in module.modules():
        if isinstance(m, torch.nn.Dropout) and m.p > 0:
            return True
        cfg = getattr(m, "config", None)
        if cfg is not None and any(getattr(cfg, a, 0) or 0 for a in ("attention_probs_dropout_prob", "attention_dropout")):
            return True
    return False


def adamw(groups, lr: float) -> torch.optim.AdamW:
    """AdamW, fused (one kernel over all tensors instead of a loop of small ops per tensor: MiniLM on CPU,
    55 -> 7 ms a step at 2 threads, 80 -> 11 ms at 1) where torch has it: CPU since torch 2.4, CUDA.
    The same algorithm, not the same rounding as the default; resuming stays bit-for-bit."""
    if {p.device.type for g in groups for p in g["params"]} <= {"cpu", "cuda"}:
        try:
            return torch.optim.AdamW([dict(g) for g in groups], lr=lr, fused=True)
        except RuntimeError:  # torch < 2.4: fused AdamW is CUDA-only
            pass
    return torch.optim.AdamW(groups, lr=lr)


def linear_schedule(warmup_steps: int, total_steps: int, constant: bool = False):
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if constant:
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return f


class Trainer:
    """Composes data, towers, sampler, loss, store, optimiser and hooks for one run directory."""

    def __init__(self, cfg: TrainConfig, dataset=None, model=None, hooks=None):
        from negminer.data.load import load_dataset
        from negminer.encoders import build_encoder

        from negminer import dist

        self.cfg = cfg
        self.run_dir = Path(cfg.out)
        self.dist = dist.current()
        self.device = pick_device(cfg.device)
        if self.dist.on and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.dataset = dataset if dataset is not None else load_dataset(cfg.data)
        torch.manual_seed(cfg.seed)
        self.model = model if model is not None else build_encoder(
            cfg.encoder, shared=cfg.shared, pooling=cfg.pooling, normalize=cfg.normalize,
            temperature=cfg.temperature, learn_temperature=cfg.learn_temperature,
            query_max_length=cfg.query_max_length, target_max_length=cfg.target_max_length,
            device=str(self.device))
        self.model.to(self.device)
        for mod in self.model.modules():  # embedding bags (the static tower): sparse gradients, densified once
            if isinstance(mod, torch.nn.EmbeddingBag) and not mod.weight.is_sparse:  # per step (see train_step);
                mod.sparse = cfg.negatives != "all"  # all targets touch most of the vocabulary: dense is cheaper
        pos = self.dataset.positives(cfg.train_split)
        self.qids = sorted(pos, key=lambda q: self.dataset.query_index[q])
        self.pos_sets = [pos[q] for q in self.qids]
        self.pos_lists = [sorted(pos[q]) for q in self.qids]
        self.query_texts = [self.dataset.query_texts[self.dataset.query_index[q]] for q in self.qids]
        self.target_inputs = self.dataset.target_inputs()
        self.global_batch = cfg.batch_size * self.dist.world  # --batch-size is per rank
        if self.global_batch > len(self.qids):
            raise ConfigError(f"--batch-size {cfg.batch_size} x {self.dist.world} processes is larger than the "
                              f"{len(self.qids)} training queries of {self.dataset.name}/{cfg.train_split}")
        self.batcher = build_batcher(replace(cfg, batch_size=self.global_batch), len(self.qids), self.pos_lists,
                                     self.dataset.num_targets)
        self.total_steps = cfg.total_steps(self.batcher.batches_per_epoch)
        self.loss_fn = build_loss(cfg.loss, **cfg.loss_options())
        mined = None
        if cfg.negatives == "mined":
            from negminer.data.mined import mined_lists

            mined = mined_lists(self.dataset, self.qids, cfg.mined_file or None)
        self.sampler = build_sampler(cfg, replacement=self.loss_fn.replacement, mined=mined)
        self.sampler.want_log_z = "log_z" in self.loss_fn.needs
        self.dups = duplicate_groups(self.target_inputs) if cfg.dedupe_text else {}
        self.hooks = default_hooks(cfg) if hooks is None else list(hooks)
        self.store = None
        if (self.sampler.k and self.sampler.needs_store) or cfg.diagnose_every:
            self.store = self._make_store(resume=False)
        self._check_pool()
        self.tower_dropout = has_dropout(self.model.target_tower)
        uses_store = self.store is not None and self.sampler.k and self.sampler.needs_store
        self.refreshers = build_refreshers(cfg, self.model.dim, self.tower_dropout) if uses_store else []
        self.step_stats: dict = {}  # this step's sampling stats (drawn_age), for the log
        self.grad_stats: dict = {}  # query-tower / target-tower gradient norm (separate towers)
        self.bank = None
        if cfg.memory == "contaccum":
            from negminer.memory.contaccum import MemoryBank

            self.bank = MemoryBank(cfg.bank_size or self.global_batch, dual=cfg.bank == "dual")
        decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim < 2]
        self.optimizer = adamw(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
        warm = int(cfg.warmup * self.total_steps) if cfg.warmup < 1 else int(cfg.warmup)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, linear_schedule(warm, self.total_steps, constant=cfg.schedule == "constant"))
        self.counters = Counters()
        self.step = 0
        self.seconds = 0.0
        self.phases = PhaseTimer(self.device)
        self.last_checkpoint_step = None

    # ---- the store ------------------------------------------------------------------------
    def _make_store(self, resume: bool) -> TargetStore:
        cfg, n, d = self.cfg, self.dataset.num_targets, self.model.dim
        shard = self.dist if cfg.store_shard and self.dist.on else None  # this process holds 1/W of the rows
        nbytes = -(-n // (shard.world if shard else 1)) * d * {"fp32": 4, "fp16": 2, "bf16": 2}[cfg.store_dtype]
        path = cfg.store_path or None
        if path is None and cfg.store_max_ram_mb and nbytes > cfg.store_max_ram_mb * 2**20:
            path = str(self.run_dir / "store.npy")
        if path is not None and self.dist.on:  # each rank keeps its own copy (or its shard)
            path = str(Path(path).with_suffix(f".rank{self.dist.rank}.npy"))
        device = torch.device("cpu")
        if path is None:
            if cfg.store_device.startswith("cuda"):
                if not torch.cuda.is_available():
                    raise ConfigError("--store-device cuda asked for, but torch sees no CUDA device")
                device = torch.device(cfg.store_device)
            elif cfg.store_device == "auto" and self.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(self.device)
                device = self.device if nbytes < 0.5 * free else torch.device("cpu")
        store = TargetStore(self.dataset.target_ids, self.target_inputs, d, dtype=cfg.store_dtype, path=path,
                            device=device, reopen=resume, shard=shard)
        if store.device.type == "cpu" and self.device.type == "cuda":
            store.feed_device = self.device  # score on the GPU, chunks staged through pinned memory
        return store

    def _check_pool(self) -> None:
        k, s = self.sampler.k, self.sampler
        if not k:
            return
        pool = s.pool_size(self.store)
        most_excluded = max(len(self.exclude(i)) for i in range(len(self.qids)))
        if not s.replacement and k > pool - 1:
            raise ConfigError(f"--num-negatives {k} but --negatives {s.name} draws from {pool} targets; "
                              f"use at most {pool - 1} (or --replacement)")
        if pool - most_excluded < 1:
            raise ConfigError(f"--negatives {s.name} draws from {pool} targets, but a training query excludes "
                              f"{most_excluded} (its positives and duplicates): no negative is left")

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.cfg.bf16 else nullcontext()

    def encode_rows(self, rows, step: int) -> torch.Tensor:
        """Re-encode store rows without gradient (eval mode, the training autocast); counted. Under torchrun
        each rank encodes its share of every chunk and the shares are gathered into every rank's store."""
        d, bs = self.dist, self.cfg.eval_batch_size

        def shared(part):  # counted once by the store: the ranks' shares together
            mine = self.store.embed(part[d.share(len(part))], self.model, bs, autocast=self.autocast())
            return d.gather(mine.to(self.device), len(part)).cpu()

        return self.store.encode(rows, self.model, step, batch_size=bs, autocast=self.autocast(),
                                 embed=shared if d.on else None)

    def setup_sampler(self) -> None:
        if self.store is not None:
            self.sampler.setup(self.store, self.model, self.step, encode=self.encode_rows)
            for r in self.refreshers:
                r.setup(self.store, self.sampler.pool_rows(self.store), self.encode_rows, self.cfg.seed)

    def last_stats(self) -> dict:
        """The last step's sampler and refresher statistics (staleness, drawn_age, nystrom_*)."""
        out = {**self.sampler.last_stats, **self.step_stats, **self.grad_stats}
        for r in self.refreshers:
            out.update(r.stats)
        return out

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

    def make_batch(self, step: int, idx, pos_rows, pos_emb, micro: int = 0) -> Batch:
        seed = self.cfg.seed * 1_000_003 + step + 500_009
        if micro:  # the k-th micro-batch of an accumulated step: its own draws
            seed = int(np.random.SeedSequence([self.cfg.seed, step, micro, 41]).generate_state(1, np.uint64)[0] >> 1)
        g = torch.Generator().manual_seed(seed)
        dev = self.store.scoring_device if self.store is not None else torch.device("cpu")
        dg = torch.Generator(device=dev).manual_seed(seed) if dev.type != "cpu" else None
        positives = Exclusions([self.pos_sets[i] for i in idx], self.dataset.num_targets)
        return Batch(step, torch.as_tensor(pos_rows, dtype=torch.long),
                     Exclusions([self.exclude(i) for i in idx], self.dataset.num_targets),
                     pos_emb.detach(), g, float(self.model.logit_scale().detach()), dg,
                     torch.as_tensor(np.asarray(idx), dtype=torch.long), positives, self.dist)

    def target_features(self, rows):
        """Tower inputs of target rows: from the store's token table when there is a store."""
        if self.store is not None:
            return self.store.features(rows, self.model)
        return self.model.tokenize_targets([self.target_inputs[int(r)] for r in rows])

    def embed_target_rows(self, rows) -> torch.Tensor:
        """With-gradient target embeddings of store rows (the training autocast); under torchrun each rank
        encodes its share of ``rows`` and the shares are gathered (dist.py)."""
        d = self.dist
        return d.gather(self.embed_target_rows_local(rows[d.share(len(rows))] if d.on else rows), len(rows))

    def embed_target_rows_local(self, rows) -> torch.Tensor:
        if len(rows) == 0:  # a rank without a share
            return torch.zeros(0, self.model.dim, device=self.device)
        with self.autocast():
            return self.model.embed_targets(self.target_features(rows))

    def embed_training_queries(self, idx) -> torch.Tensor:
        """With-gradient embeddings of training queries ``idx`` (this rank's share, gathered under torchrun)."""
        d, m = self.dist, self.model
        mine = idx[d.share(len(idx))] if d.on else idx
        with self.autocast():
            q = m.embed_queries(m.tokenize_queries([self.query_texts[i] for i in mine]))
        return d.gather(q, len(idx))

    def negatives_and_loss(self, step: int, idx, pos_rows, q, p, embed_rows, micro: int = 0, weight: float = 1.0,
                           extend=None, log_batch_count=None):
        """Sample, embed the drawn rows with ``embed_rows(rows) -> [len, d]`` (each distinct usable row once,
        with gradient; masked slots get zeros), compute the loss and backpropagate it. Returns (loss, the step's
        pieces for ``update_store``), or (nan, None) for a skipped step.
        Accumulation: micro-batch ``micro`` (gradients zeroed at 0) backpropagates ``weight`` x its loss;
        ``extend(kw, batch) -> kw`` adds to the loss inputs (ContAccum's bank); ``log_batch_count`` replaces the
        batcher's (a micro-batch's in-batch pool is smaller)."""
        ph = self.phases
        with ph("sample"):
            batch = self.make_batch(step, idx, pos_rows, p, micro)
            draw = self.sampler.sample(q.detach(), batch, self.store) if self.sampler.k else Draw.empty(len(idx))
        neg, uniq, fresh, cached = None, None, None, None
        if draw.ids.numel() and bool((~draw.mask).any()):
            if self.cfg.negative_grad == "none":  # the store's (stale) embeddings: no target-tower work
                with ph("sample"):
                    neg, cached = self.cached_negatives(draw, q.device)
            else:
                ok = ~draw.mask
                uniq, inv = draw.ids[ok].unique(return_inverse=True)
                with ph("target_encode_neg"):
                    fresh = embed_rows(uniq)
                self.counters.target_encodes += len(uniq)
                neg = fresh.new_zeros(*draw.ids.shape, fresh.shape[-1])
                neg[ok.to(neg.device)] = fresh[inv.to(fresh.device)]
        with ph("loss_backward"):
            kw = loss_inputs(self.loss_fn, q, p, self.model.logit_scale(), batch, draw, neg, self.cfg.inbatch,
                             log_batch_count or self.batcher.log_batch_count, share=self.cfg.share_negatives)
            if extend is not None:
                kw = extend(kw, batch)
            loss = self.loss_fn(**kw)
            if not torch.isfinite(loss):
                return self._diverged("the loss", loss.detach(), step), None
            if micro == 0:
                self.optimizer.zero_grad(set_to_none=True)
            (loss * weight if weight != 1.0 else loss).backward()
        # detached: a piece kept after backward must not keep the graph's nodes alive (accumulation keeps K)
        return float(loss.detach()), (batch, draw, p.detach(), uniq, None if fresh is None else fresh.detach(), cached)

    def _diverged(self, what: str, value, step: int) -> float:
        if self.cfg.on_nan == "stop":
            last = self.last_checkpoint_step
            raise TrainingDiverged(f"{what} is {float(value)} at step {step}; nothing of this step was applied "
                                   + (f"and the checkpoint of step {last} is intact" if last is not None
                                      else "(no checkpoint yet)")
                                   + "; lower --lr, drop --bf16, or pass --on-nan skip")
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()  # the schedule stays a function of the step
        self.counters.skipped_steps += 1
        return float("nan")

    def train_step(self, step: int) -> float:
        """One optimiser step; returns the loss (nan for a skipped step)."""
        with self.phases("batching"):
            self.batcher.prepare(step, self.encode_training_queries, self.dist)
        # dropout etc.: a function of the step (and of the rank, whose rows are other rows)
        torch.manual_seed(self.cfg.seed * 1_000_003 + step + 7_777_777 * self.dist.rank)
        idx, pos_rows = self._batch(step)
        if self.cfg.memory == "gradcache":
            from negminer.memory.gradcache import gradcache_step

            return gradcache_step(self, step, idx, pos_rows)
        if self.cfg.memory in ("accumulation", "contaccum"):
            from negminer.memory.accumulation import accumulation_step

            return accumulation_step(self, step, idx, pos_rows)
        ph = self.phases
        with ph("query_encode"):
            q = self.embed_training_queries(idx)
        self.counters.query_encodes += len(idx)
        self.batcher.record(idx, q)
        if self.sampler.all_targets:
            return self.train_step_all(step, idx, pos_rows, q)
        with ph("target_encode_pos"):
            p = self.embed_target_rows(pos_rows)
        self.counters.target_encodes += len(pos_rows)
        loss, parts = self.negatives_and_loss(step, idx, pos_rows, q, p, self.embed_target_rows)
        if parts is None or not self.optimizer_step(step):
            return float("nan")
        self.update_store(step, *parts)
        return loss

    def update_store(self, step: int, batch, draw, p, uniq, fresh, cached) -> None:
        """After the optimiser step: the write-back and the other refreshers, the sampler's bookkeeping."""
        if self.store is None:
            return
        ph = self.phases
        self.step_stats = {}
        drawn = uniq if cached is None else cached
        if drawn is not None and len(drawn):  # how stale the rows it drew were (before any refresh)
            self.step_stats["drawn_age"] = float((step - self.store.age[drawn].float()).mean())
        f = Fresh(step, batch.pos_rows, p.detach(), uniq, None if fresh is None else fresh.detach())
        for r in self.refreshers:
            if r.phase == "write_back":
                with ph("write_back"):
                    r.after_step(f)
        with ph("refresh"):
            self.sampler.update(batch, draw, self.model, self.store, step + 1, encode=self.encode_rows)
            for r in self.refreshers:
                if r.phase != "write_back":
                    r.after_step(f)

    def optimizer_step(self, step: int) -> bool:
        """Clip and apply the accumulated gradients; False when the norm is not finite (the step is skipped
        or training stops, per --on-nan)."""
        with self.phases("optimizer"):
            params = [x for x in self.model.parameters() if x.grad is not None]
            # sparse gradients add each bag call's rows (queries, positives, negatives) instead of filling and
            # adding a dense vocab x d tensor per call (~10 ms each for the static tower on 2 cores)
            for x in params:  # AdamW wants them dense: once per step
                if x.grad.is_sparse:
                    x.grad = x.grad.to_dense()
            # under torchrun every rank gets the global gradient (dist.py): one all-reduce per step. The ranks
            # run the same graph on their shares (each has queries and positives), so the same parameters have one
            self.dist.all_reduce_grads(params)
            # the towers' balance (ContAccum, Kim et al. 2024, sec. 4) when they are separate
            self.grad_stats = tower_norm_ratio(self.model) if not self.model.shared else {}
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else math.inf)
            self.grad_stats["grad_norm"] = float(norm)  # before clipping
            if not torch.isfinite(norm):
                self._diverged("the gradient norm", norm, step)
                return False
            self.optimizer.step()
            self.scheduler.step()
        return True

    def train_step_all(self, step: int, idx, pos_rows, q) -> float:
        """--negatives all: every target encoded (chunks, no graph), the loss over all of them, then the
        cached embedding gradient pushed back through the target tower chunk by chunk."""
        m, ph, n = self.model, self.phases, self.dataset.num_targets

        feats = self.__dict__.setdefault("_all_features", {})  # tokenised once per chunk, kept

        def encode(rows):
            key = (int(rows[0]), len(rows))
            if key not in feats:
                feats[key] = self.target_features(rows)
            with self.autocast():
                return m.embed_targets(feats[key])

        d = self.dist  # under torchrun each rank encodes (and backpropagates) its share of the targets
        with ph("target_encode_neg"):
            enc = encode_cached(encode, n, self.cfg.chunk_size or self.cfg.eval_batch_size, params=m.parameters(),
                                share=d.share(n), gather=(lambda e: d.gather(e.to(d.device), n).to(self.device))
                                if d.on else None, dim=m.dim)
        self.counters.target_encodes += n
        batch = self.make_batch(step, idx, pos_rows, enc.emb[torch.as_tensor(pos_rows)])
        with ph("loss_backward"):
            loss = self.loss_fn(**all_inputs(self.loss_fn, q, m.logit_scale(), batch, enc.emb))
            if not torch.isfinite(loss):
                return self._diverged("the loss", loss.detach(), step)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with ph("target_encode_neg"):
            enc.backward()
        self.counters.target_encodes += n
        if not self.optimizer_step(step):
            return float("nan")
        return float(loss.detach())

    def encode_training_queries(self, idx) -> torch.Tensor:
        """Eval-mode embeddings of training queries ``idx`` (the batcher's clustering), counted."""
        was = self.model.training
        self.model.eval()
        with torch.no_grad(), self.autocast():  # under torchrun each rank encodes its share
            out = self.dist.sharded(self.model).encode_queries(
                [self.query_texts[int(i)] for i in idx], batch_size=self.cfg.eval_batch_size, progress=False)
        self.model.train(was)
        self.counters.query_encodes += len(idx)
        return torch.as_tensor(out).float()

    def cached_negatives(self, draw: Draw, device):
        """--negative-grad none: [B, k, d] cached embeddings of the drawn rows (no gradient, not
        counted as encodes) and the distinct usable rows."""
        ok = ~draw.mask
        rows = draw.ids[ok].unique()
        emb = self.store.embeddings(draw.ids.reshape(-1)).view(*draw.ids.shape, -1)
        return emb.masked_fill(draw.mask.unsqueeze(-1), 0.0).to(device), rows

    def eval_due(self) -> bool:
        """--eval-every N steps, or --eval-every-seconds S of training time (a curve against wall time)."""
        cfg = self.cfg
        if cfg.eval_every and self.step % cfg.eval_every == 0:
            return True
        if cfg.eval_every_seconds and self.seconds >= self._next_eval_s:
            self._next_eval_s = (self.seconds // cfg.eval_every_seconds + 1) * cfg.eval_every_seconds
            return True
        return False

    def out_of_time(self) -> bool:
        """--time-budget spent (training seconds: evaluation, diagnostics and saves not counted)."""
        return bool(self.cfg.time_budget) and self.seconds >= self.cfg.time_budget

    def work(self) -> dict:
        """Counters for logs: target_encodes includes the store's refresh encodes."""
        refresh = self.store.target_encodes if self.store is not None else 0
        return {"query_encodes": self.counters.query_encodes, "target_encodes": self.counters.target_encodes + refresh,
                "refresh_encodes": refresh, "skipped_steps": self.counters.skipped_steps}

    # ---- evaluation -----------------------------------------------------------------------
    def evaluate(self, out_dir=None) -> dict:
        """Every rank encodes its share of the corpus and queries and ranks its share of the queries
        (dist.Sharded); only rank 0 writes."""
        from negminer.eval.evaluate import evaluate

        d = self.dist
        return evaluate(d.sharded(self.model), self.dataset, split=self.cfg.eval_split,
                        batch_size=self.cfg.eval_batch_size, progress=not self.cfg.quiet and d.main,
                        out_dir=out_dir if d.main else None)

    # ---- run directory --------------------------------------------------------------------
    def _state(self) -> dict:
        epoch, batch = self.batcher.position(self.step)
        return {"step": self.step, "epoch": epoch, "batch_in_epoch": batch, "total_steps": self.total_steps,
                "scheduler_last_epoch": self.scheduler.last_epoch, "seconds": self.seconds,
                "phase_seconds": dict(self.phases.seconds),
                "counters": vars(self.counters).copy(), "seed": self.cfg.seed, "world_size": self.dist.world,
                "global_batch": self.global_batch,
                "store_encodes": self.store.target_encodes if self.store is not None else 0}

    def save(self) -> None:
        if self.dist.on and self.store is not None and not self.store.sharded:  # replicas must not drift (dist.py)
            c = self.store.checksum()
            if os.environ.get("NEGMINER_TEST_SKEW_RANK") == str(self.dist.rank):  # tests: a drifted replica
                c[0] += 1.0
            if not self.dist.same(c):
                raise TrainingDiverged(f"step {self.step}: the processes' target stores differ (a nondeterministic "
                                       "kernel or a rank that skipped an update); nothing was saved")
        tensors, meta = self.sampler.state()
        bt, bm = self.batcher.state()
        tensors, meta = {**tensors, **bt}, {**meta, **({"batcher": bm} if bm else {})}
        for r in self.refreshers:
            t, m = r.state()
            tensors, meta = {**tensors, **t}, {**meta, **({f"refresher.{r.name}": m} if m else {})}
        if self.bank is not None:
            t, m = self.bank.state()
            tensors, meta = {**tensors, **t}, {**meta, "bank": m}
        if self.dist.main:  # the ranks' states are the same (dist.py): rank 0 writes them
            save_checkpoint(self.run_dir, self.model, self.optimizer, self._state(), tensors, store=self.store,
                            sampler_meta=meta)
        elif self.store is not None and self.store.sharded:  # rank 0 collects the rows from every process
            self.store.save(None)
        self.dist.barrier()
        self.last_checkpoint_step = self.step

    def resume(self) -> bool:
        ckpt = find_checkpoint(self.run_dir)
        if ckpt is None:
            return False
        st, extra = load_checkpoint(ckpt, self.model, self.optimizer)
        if st.get("global_batch", self.global_batch) != self.global_batch:
            raise ConfigError(f"{ckpt}: saved with a global batch of {st['global_batch']} ({st.get('world_size', 1)} "
                              f"processes); this run has {self.global_batch} ({self.dist.world} x --batch-size "
                              f"{self.cfg.batch_size}): resume with the same product of processes and --batch-size")
        self.step, self.seconds = st["step"], st["seconds"]
        self.phases = PhaseTimer(self.device, st.get("phase_seconds"))
        self.last_checkpoint_step = self.step
        if self.store is not None:
            if self.store.path is not None:  # reopen the memory map instead of overwriting it
                self.store = self._make_store(resume=True)
            self.store.load(ckpt, st.get("store_encodes", 0))
        self.sampler.load_state(extra, st.get("sampler", {}))
        self.batcher.load_state(extra, st.get("sampler", {}).get("batcher", {}))
        for r in self.refreshers:
            if f"refresher.{r.name}" in st.get("sampler", {}):
                r.load_state(extra, st["sampler"][f"refresher.{r.name}"])
        if self.bank is not None:
            self.bank.load_state(extra, st.get("sampler", {}).get("bank", {}), self.device)
        self.counters = Counters(**st["counters"])
        self.scheduler.last_epoch = st["scheduler_last_epoch"]
        for g, lr0, f in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            g["lr"] = lr0 * f(self.scheduler.last_epoch)
        # drop log rows written after the checkpoint (the run was killed between checkpoints)
        if self.dist.main:
            rows = [r for r in read_jsonl(self.run_dir / "train_log.jsonl") if r.get("step", 0) <= self.step]
            atomic_write_text(self.run_dir / "train_log.jsonl", "".join(_jsonl(r) for r in rows))
        return True

    def _log(self, row: dict) -> None:
        if not self.dist.main:
            return
        with open(self.run_dir / "train_log.jsonl", "a", encoding="utf-8") as f:
            f.write(_jsonl(row))

    def run(self, resume: bool = False) -> dict:
        cfg, main = self.cfg, self.dist.main  # under torchrun only rank 0 writes the run folder and evaluates
        quiet = cfg.quiet or not main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for leftover in remove_stale_temps(self.run_dir):  # a save killed half-way
                if not quiet:
                    print(f"removed {leftover.name}, left by an interrupted save", file=sys.stderr)
        self.dist.barrier()
        resumed = self.resume() if resume else False
        if resume and not resumed and not quiet:
            print(f"no checkpoint in {self.run_dir}: starting from scratch", file=sys.stderr)
        if main and not resumed:
            (self.run_dir / "train_log.jsonl").unlink(missing_ok=True)
        if main:
            save_config(cfg, self.run_dir)
        zs_path = self.run_dir / "zero_shot.json"
        zero_shot = None
        if cfg.zero_shot:
            if zs_path.exists():
                import json

                zero_shot = json.loads(zs_path.read_text())
            else:
                zero_shot = self.evaluate()
                if main:
                    atomic_write_json(zs_path, zero_shot)
                if not quiet:
                    print("zero-shot: " + _fmt(zero_shot), file=sys.stderr)
        before = self.phases.seconds["setup"]
        with self.phases("setup"):  # the store's first fill, indexes: training work, counted in the time
            self.setup_sampler()
        self.seconds += self.phases.seconds["setup"] - before
        self.model.train()
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_steps, initial=self.step, disable=quiet, desc="train", unit="step",
                   dynamic_ncols=True)
        self._next_eval_s = (self.seconds // cfg.eval_every_seconds + 1) * cfg.eval_every_seconds if cfg.eval_every_seconds else 0
        t0 = time.perf_counter() - self.seconds
        pause = float(os.environ.get("NEGMINER_STEP_SLEEP", "0"))  # tests: widen the window for a kill
        die = (int(os.environ.get("NEGMINER_DIE_AT_STEP", "-1")), int(os.environ.get("NEGMINER_DIE_RANK", "0")))
        while self.step < self.total_steps and not self.out_of_time():
            if (self.step, self.dist.rank) == die:  # tests: a rank killed mid-run
                os._exit(17)
            loss = self.train_step(self.step)
            if pause:
                time.sleep(pause)
            self.step += 1
            self.seconds = self.dist.agree(time.perf_counter() - t0)  # rank 0's clock decides budgets and evals
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            row = None
            if self.step % cfg.log_every == 0 or self.step == self.total_steps or self.out_of_time():
                row = {"step": self.step, "loss": round(loss, 6) if math.isfinite(loss) else None,
                       "lr": self.scheduler.get_last_lr()[0], "seconds": round(self.seconds, 3), **self.work(),
                       **({"world_size": self.dist.world} if self.dist.on else {}),
                       "peak_rss_mb": peak_rss_mb(), "phases": self.phases.rounded(),
                       **{k: round(v, 6) for k, v in self.last_stats().items()}}
            for hook in self.hooks if main else ():
                extra = hook.on_step(self, self.step)
                if extra:
                    row = dict(row or {"step": self.step}, **extra)
                    self.model.train()
            if self.step < self.total_steps and not self.out_of_time() and self.eval_due():
                row = dict(row or {"step": self.step}, seconds=round(self.seconds, 3), eval=self.evaluate())
                self.model.train()
            t0 = time.perf_counter() - self.seconds  # hook and evaluation time is not training time
            if row:
                self._log(row)
            if (cfg.save_every and self.step % cfg.save_every == 0 and self.step < self.total_steps
                    and not self.out_of_time()):
                self.save()
        bar.close()
        self.save()
        if main:
            self.model.save(self.run_dir / "model")
        final = self.evaluate(out_dir=self.run_dir)
        if not main:  # rank 0 writes the metrics
            self.dist.barrier()
            return {**final, "train": {"steps": self.step, **self.work(), "world_size": self.dist.world}}
        metrics = dict(final)  # METRIC_KEYS, and the XMC metrics for multi-label data
        if zero_shot is not None:
            metrics["zero_shot"] = dict(zero_shot)
        metrics["train"] = {"steps": self.step, **self.work(), "seconds": round(self.seconds, 2),
                            "negatives": cfg.negatives, "loss": cfg.loss, "time_budget": cfg.time_budget or None,
                            "stopped_by": "time_budget" if self.step < self.total_steps else "steps",
                            "phases": self.phases.rounded(), "peak_rss_mb": peak_rss_mb(), "split": cfg.eval_split,
                            "world_size": self.dist.world}
        atomic_write_json(self.run_dir / "metrics.json", metrics)
        self.dist.barrier()
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
    for k in [*METRIC_KEYS[:-1], *(k for k in metrics if k.startswith("xmc_") and k != "xmc_queries")]:
        if zs:
            lines.append(f"{k:<12}{zs[k]:>11.4f}{metrics[k]:>10.4f}{metrics[k] - zs[k]:>+10.4f}")
        else:
            lines.append(f"{k:<12}{'-':>11}{metrics[k]:>10.4f}")
    lines.append(f"queries: {metrics['num_queries']}   steps: {metrics['train']['steps']}   "
                 f"query_encodes: {metrics['train']['query_encodes']}   "
                 f"target_encodes: {metrics['train']['target_encodes']}   "
                 f"train seconds: {metrics['train']['seconds']}   peak RSS MB: {metrics['train']['peak_rss_mb']}")
    return "\n".join(lines)
