"""The training loop: batches -> towers -> sampler -> loss -> optimiser, with counters,
checkpoints that resume bit-for-bit, periodic evaluation and a progress bar.

Determinism: the batch of a step, the positive drawn for each query and the torch RNG used by
dropout are all functions of (seed, step), and the checkpoint stores model, optimiser, scheduler
position and every RNG; so a run resumed after a kill reproduces the uninterrupted loss curve.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from negminer import rules
from negminer.batching import build_batcher
from negminer.config import TrainConfig, default_lr, save_config
from negminer.data.splits import HELD_OUT, check_splits, dev_split, evaluates_during, hold_out
from negminer.errors import ConfigError, Interrupted, TrainingDiverged
from negminer.fileio import check_output, remove_stale_temps
from negminer.losses import build_loss
from negminer.memory import batch_norm_layers, build_memory
from negminer.pipeline.encoding import Encoding
from negminer.pipeline.step import StepResult
from negminer.pipeline.step import train_step as pipeline_step
from negminer.refreshers import Fresh, build_refreshers
from negminer.samplers import build_sampler
from negminer.store import TargetStore
from negminer.store.build import build_store
from negminer.train.duplicates import duplicate_groups
from negminer.train.helpers import (Counters, adamw, has_dropout, linear_schedule, peak_rss_mb,  # noqa: F401
                                    pick_device, tower_norm_ratio)
from negminer.train.guard import DivergenceGuard, Signals
from negminer.train.phases import PhaseTimer
from negminer.train.selection import Selection, select_metric
from negminer.train import rundir
from negminer.train.rundir import _jsonl
from negminer.train.finish import format_comparison  # noqa: F401 (the CLI's import)
from negminer.train.writes import writing
from negminer.types import Batch, Exclusions



class Trainer:
    """Composes data, towers, sampler, loss, store, memory strategy, optimiser and hooks for one run directory;
    the step itself is pipeline/step.py."""

    def __init__(self, cfg: TrainConfig, dataset=None, model=None, hooks=None, clock=time.perf_counter):
        """``hooks``: objects with any of ``on_step_start(trainer, step)`` (inside the step's timed region),
        ``on_step(trainer, step) -> dict | None`` (after it; merged into the log row) and ``on_save(trainer)``
        (before a checkpoint); the caller builds them (``hooks.default_hooks(cfg)`` maps options to tools, the
        CLI adds them). ``clock``: seconds, for time budgets and timed evaluations."""
        from negminer.data.load import load_dataset
        from negminer.encoders import build_encoder

        from negminer import dist

        self.pipeline = rules.check(cfg)  # the Python API validates exactly as the CLI does
        if cfg.lr is None:
            cfg = replace(cfg, lr=default_lr(cfg.encoder))
        self.cfg = cfg
        check_output(cfg.out, "--out")  # before any work: where the run goes, then the splits it needs
        if cfg.store_path:
            check_output(cfg.store_path, "--store-path", folder=False)
            if not Path(cfg.store_path).expanduser().parent.is_dir():
                raise ConfigError(f"--store-path {cfg.store_path}: folder {Path(cfg.store_path).parent} does not "
                                  "exist; create it first")
        self.run_dir = Path(cfg.out)
        self.dist = dist.current()
        self.device = pick_device(cfg.device)
        if self.dist.on and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.dataset = dataset if dataset is not None else load_dataset(cfg.data)
        for w in check_splits(self.dataset, cfg):  # warnings print under --quiet too
            print(f"negminer: warning: {w}", file=sys.stderr)
        self.dev_split, self.selection = None, None
        if evaluates_during(cfg):  # model selection on dev, never on test unless asked
            self.dev_split = dev_split(self.dataset, cfg.dev_split, cfg.train_split)
            if self.dev_split == HELD_OUT:
                self.dataset = hold_out(self.dataset, cfg.train_split, cfg.dev_size, cfg.seed)
            if cfg.select_metric != "none":
                self.selection = Selection(select_metric(cfg.select_metric, self.dataset.is_multilabel()), cfg.patience)
        if cfg.patience and self.selection is None:
            raise ConfigError("--patience counts dev evaluations that select the model: pass --eval-every or "
                              "--eval-every-seconds, and a --select-metric other than none")
        torch.manual_seed(cfg.seed)
        self.model = model if model is not None else build_encoder(
            cfg.encoder, shared=cfg.shared, pooling=cfg.pooling, normalize=cfg.normalize,
            temperature=cfg.temperature, learn_temperature=cfg.learn_temperature,
            query_max_length=cfg.query_max_length, target_max_length=cfg.target_max_length,
            device=str(self.device))
        self.model.to(self.device)
        if cfg.memory == "gradcache" or cfg.negatives == "all":  # chunked encoding twice over (memory/cached_targets.py)
            bn = batch_norm_layers(self.model)
            if bn:
                raise ConfigError(f"--{'memory gradcache' if cfg.memory == 'gradcache' else 'negatives all'} encodes in "
                                  f"chunks, twice: the tower's batch-norm layers ({', '.join(bn[:3])}) would normalise "
                                  "by each chunk's statistics (another gradient than the whole batch's) and update "
                                  "their running statistics on both passes; use a tower without batch norm, or "
                                  "--memory plain / accumulation")
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
        self.hooks = list(hooks or [])
        self.clock = clock
        self.store = None
        if (self.sampler.k and self.sampler.needs_store) or cfg.diagnose_every:
            self.store = self.make_store(resume=False)
        self._check_pool()
        self.tower_dropout = has_dropout(self.model.target_tower)
        uses_store = self.store is not None and self.sampler.k and self.sampler.needs_store
        self.refreshers = build_refreshers(cfg, self.model.dim, self.tower_dropout) if uses_store else []
        self.step_stats: dict = {}  # this step's sampling stats (drawn_age), for the log
        self.grad_stats: dict = {}  # query-tower / target-tower gradient norm (separate towers)
        self.memory = build_memory(cfg, self.global_batch)
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
        self.guard = DivergenceGuard(cfg.divergence_factor)
        self._weight_norm = None
        self.stopped_by = None
        self.encoding = Encoding(self.model, self.dist, self.counters, self.phases, self.autocast, self.query_texts,
                                 self.target_features, chunk=cfg.chunk_size or 32)

    # ---- the store ------------------------------------------------------------------------
    def make_store(self, resume: bool) -> TargetStore:
        return build_store(self.cfg, self.dataset.target_ids, self.target_inputs, self.model.dim, self.dist,
                           self.device, self.run_dir, resume=resume)

    def _check_pool(self) -> None:
        k, s = self.sampler.k, self.sampler
        if not k:
            return
        pool = s.pool_size(self.store, self.dataset.num_targets)
        most_excluded = max(len(self.exclude(i)) for i in range(len(self.qids)))
        if s.name == "mined" and not s.replacement and k > pool - 1:
            src = f"--mined-file {self.cfg.mined_file}" if self.cfg.mined_file else "the data's negative lists"
            raise ConfigError(f"--num-negatives {k} but {src} holds at most {pool - 1} negatives per query; pass "
                              f"--num-negatives {pool - 1} (or mine more: negminer mine --top-k {k})")
        if not s.replacement and k > pool - 1:
            raise ConfigError(f"--num-negatives {k} but --negatives {s.name} draws from {pool} targets; "
                              f"use at most {pool - 1} (or --replacement)")
        if pool - most_excluded < 1:
            raise ConfigError(f"--negatives {s.name} draws from {pool} targets, but a training query excludes "
                              f"{most_excluded} (its positives and duplicates): no negative is left")

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.cfg.bf16 else nullcontext()

    def cast_scope(self):
        """Around a micro-batch's forward passes with gradient: autocast's cache of bf16 weight copies lives
        until the outermost autocast context exits, so inside this (disabled) one the weights are cast once for
        the queries, positives and negatives instead of once per encode (4% of a bf16 step with MiniLM on 2 CPU
        cores). Nothing without gradient may run inside: a cast cached under no_grad would carry no gradient."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=False) if self.cfg.bf16 else nullcontext()

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
    def train_step(self, step: int) -> float:
        """One optimiser step (pipeline/step.py); returns the loss (nan for a skipped step)."""
        r = pipeline_step(self, step)
        return float("nan") if r is None else r.loss

    def batch_rows(self, step: int):
        """The step's training queries and the positive drawn for each: functions of (seed, step)."""
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

    def diverged(self, why: str, step: int, applied: bool = False) -> float:
        """Stop (TrainingDiverged, exit 3) or skip the step, per --on-nan; ``step`` is 0-based, messages count
        from 1 as train_log.jsonl does. An update already applied (``applied``) always stops."""
        last = self.last_checkpoint_step
        kept = (f"the checkpoint of step {last} is the last healthy one" if last is not None
                else "no checkpoint was written")
        if self.cfg.on_nan == "stop" or applied:
            done = "" if applied else "; nothing of this step was applied"
            raise TrainingDiverged(f"{why} at step {step + 1}{done}; {kept}; lower --lr, drop --bf16"
                                   + ("" if applied else ", or pass --on-nan skip"))
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()  # the schedule stays a function of the step
        self.counters.skipped_steps += 1
        n, limit = step + 1, self.cfg.max_skipped
        if self.counters.skipped_steps >= 5 and self.counters.skipped_steps > limit * n:
            raise TrainingDiverged(f"{self.counters.skipped_steps} of {n} steps skipped (last: {why} at step {n}), "
                                   f"more than --max-skipped {limit}; {kept}; lower --lr or drop --bf16")
        return float("nan")

    def update_store(self, step: int, res: StepResult) -> None:
        """After the optimiser step: the write-back and the other refreshers, the sampler's bookkeeping."""
        if self.store is None:
            return
        ph = self.phases
        self.step_stats = {}
        drawn = res.drawn if res.cached is None else res.cached
        if drawn is not None and len(drawn):  # how stale the rows it drew were (before any refresh)
            self.step_stats["drawn_age"] = float((step - self.store.age[drawn].float()).mean())
        f = Fresh(step, res.batch.pos_rows, res.pos_emb, res.drawn, res.drawn_emb)
        for r in self.refreshers:
            if r.phase == "write_back":
                with ph("write_back"):
                    r.after_step(f)
        with ph("refresh"):
            self.sampler.update(res.batch, res.draw, self.model, self.store, step + 1, encode=self.encode_rows)
            for r in self.refreshers:
                if r.phase != "write_back":
                    r.after_step(f)

    def optimizer_step(self, step: int, loss: float = 0.0) -> bool:
        """Clip and apply the accumulated gradients; False when the loss or the norm diverges (the step is
        skipped or training stops, per --on-nan: guard.py); stops when the update blows up the weights."""
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
            why = self.guard.check_grad(float(norm)) or self.guard.check_loss(loss)
            if why:
                self.diverged(why, step)
                return False
            check = self.cfg.divergence_factor > 0  # the weights' norm: one pass over them per step
            before = (self._weight_norm if self._weight_norm is not None else self.weight_norm()) if check else 0.0
            self.optimizer.step()
            self.scheduler.step()
            if check:
                self._weight_norm = self.weight_norm()
                why = self.guard.check_weights(before, self._weight_norm)
                if why:
                    self.diverged(why, step, applied=True)
            self.guard.accept(loss, float(norm))
        return True

    def weight_norm(self) -> float:
        with torch.no_grad():
            ps = [p.detach() for p in self.model.parameters() if p.requires_grad]
            return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(ps)).float())) if ps else 0.0

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
    def evaluate(self, out_dir=None, split: str | None = None, model=None) -> dict:
        """Every rank encodes its share of the corpus and queries and ranks its share of the queries
        (dist.Sharded); only rank 0 writes. Default: the evaluation split, the training model."""
        from negminer.eval.evaluate import evaluate

        d = self.dist
        return evaluate(d.sharded(model or self.model), self.dataset, split=split or self.cfg.eval_split,
                        batch_size=self.cfg.eval_batch_size, progress=not self.cfg.quiet and d.main,
                        out_dir=out_dir if d.main else None)

    def evaluate_dev(self) -> dict:
        """A dev evaluation; the best model so far is written as RUN/model (rank 0) unless --select-metric none."""
        m = self.evaluate(split=self.dev_split)
        self.model.train()
        if self.selection is not None and self.selection.update(m, self.step) and self.dist.main:
            with writing("the best model"):
                self.model.save(self.run_dir / "model")
        self.dist.barrier()
        return {"split": self.dev_split, **m}

    # ---- run directory --------------------------------------------------------------------
    def save(self) -> None:
        rundir.save(self)

    def resume(self) -> bool:
        return rundir.resume(self)

    def parts(self) -> dict:
        """Every part with a state to checkpoint, by name (each saves and loads its own: checkpoint.py)."""
        out = {"sampler": self.sampler, "batcher": self.batcher, "memory": self.memory}
        out.update({f"refresher.{r.name}": r for r in self.refreshers})
        return out

    def _event(self, name: str, *args) -> None:
        for hook in self.hooks:
            fn = getattr(hook, name, None)
            if fn is not None:
                fn(self, *args)

    def _log(self, row: dict) -> None:
        if not self.dist.main:
            return
        with open(self.run_dir / "train_log.jsonl", "a", encoding="utf-8") as f:
            f.write(_jsonl(row))

    def run(self, resume: bool = False) -> dict:
        """Train, save and evaluate; hooks get ``on_end(trainer, metrics)``, or ``on_end(trainer, None)`` when
        the run stops on an error or a signal."""
        try:
            return self._run(resume)
        except BaseException:
            self._event("on_end", None)
            raise

    def _run(self, resume: bool) -> dict:
        cfg, main = self.cfg, self.dist.main  # under torchrun only rank 0 writes the run folder and evaluates
        quiet = cfg.quiet or not main
        if main:
            with writing("the run folder", intact="nothing was trained"):
                self.run_dir.mkdir(parents=True, exist_ok=True)
            for leftover in remove_stale_temps(self.run_dir):  # a save killed half-way
                if not quiet:
                    print(f"removed {leftover.name}, left by an interrupted save", file=sys.stderr)
        self.dist.barrier()
        resumed = self.resume() if resume else False
        if resume and not resumed and not quiet:
            print(f"no checkpoint in {self.run_dir}: starting from scratch", file=sys.stderr)
        if main:
            with writing("the run folder", intact="nothing was trained"):
                if not resumed:
                    (self.run_dir / "train_log.jsonl").unlink(missing_ok=True)
                save_config(cfg, self.run_dir)
        zero_shot = rundir.zero_shot(self, quiet)
        before = self.phases.seconds["setup"]
        with self.phases("setup"):  # the store's first fill, indexes: training work, counted in the time
            self.setup_sampler()
        self.seconds += self.phases.seconds["setup"] - before
        self.model.train()
        from tqdm.auto import tqdm

        budget = cfg.time_budget  # with a time budget the bar counts seconds of training, the step in its postfix
        bar = (tqdm(total=budget, initial=min(self.seconds, budget), disable=quiet, desc="train", dynamic_ncols=True,
                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}{postfix}]")
               if budget else tqdm(total=self.total_steps, initial=self.step, disable=quiet, desc="train",
                                   unit="step", dynamic_ncols=True))
        self._next_eval_s = (self.seconds // cfg.eval_every_seconds + 1) * cfg.eval_every_seconds if cfg.eval_every_seconds else 0
        self._saved_at = time.monotonic()  # wall time, not the injected training clock
        t0 = self.clock() - self.seconds
        with Signals() as signals:
            while self.step < self.total_steps and not self.out_of_time() and not self.stopped_by:
                self._event("on_step_start", self.step)
                loss = self.train_step(self.step)
                self.step += 1
                self.seconds = self.dist.agree(self.clock() - t0)  # rank 0's clock decides budgets and evals
                bar.update(min(self.seconds, budget) - bar.n if budget else 1)
                bar.set_postfix(**({"step": self.step} if budget else {}), loss=f"{loss:.4f}")
                row = None
                if self.step % cfg.log_every == 0 or self.step == self.total_steps or self.out_of_time():
                    row = {"step": self.step, "loss": round(loss, 6) if math.isfinite(loss) else None,
                           "lr": self.scheduler.get_last_lr()[0], "seconds": round(self.seconds, 3), **self.work(),
                           **({"world_size": self.dist.world} if self.dist.on else {}),
                           "peak_rss_mb": peak_rss_mb(), "phases": self.phases.rounded(),
                           **{k: round(v, 6) for k, v in self.last_stats().items()}}
                for hook in self.hooks if main else ():
                    extra = hook.on_step(self, self.step) if hasattr(hook, "on_step") else None
                    if extra:
                        row = dict(row or {"step": self.step}, **extra)
                        self.model.train()
                if self.step < self.total_steps and not self.out_of_time() and self.eval_due():
                    ev = self.evaluate_dev()
                    row = dict(row or {"step": self.step}, seconds=round(self.seconds, 3), eval=ev)
                    self.model.train()
                    if self.selection and self.selection.exhausted():
                        self.stopped_by = "patience"
                t0 = self.clock() - self.seconds  # hook and evaluation time is not training time
                if row:
                    with writing("the training log"):
                        self._log(row)
                got = int(self.dist.agree(float(signals.received)))  # every rank stops at the same step
                if got:
                    bar.close()
                    self.save()
                    raise Interrupted(f"stopped by signal {got} after step {self.step}; checkpoint saved in "
                                      f"{self.run_dir / 'checkpoint'}: continue with --resume", got)
                if self.step < self.total_steps and not self.out_of_time() and not self.stopped_by and (
                        (cfg.save_every and self.step % cfg.save_every == 0)
                        or (cfg.save_every_seconds and time.monotonic() - self._saved_at >= cfg.save_every_seconds)):
                    self.save()
                    t0 = self.clock() - self.seconds  # nor is a save's
            bar.close()
            self.save()
        from negminer.train.finish import finish

        metrics = finish(self, zero_shot)
        self._event("on_end", metrics)  # hooks close their writers (report.py) with the final metrics
        return metrics
