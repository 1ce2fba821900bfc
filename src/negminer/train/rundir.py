"""The run folder's checkpoints: what a checkpoint holds of the trainer, saving it, choosing a readable one and
resuming from it (checkpoint.py writes and reads the files), and the zero-shot metrics kept across resumes."""

from __future__ import annotations

import json
import sys
import time

from negminer.errors import CheckpointError, ConfigError, TrainingDiverged
from negminer.fileio import atomic_write_json, atomic_write_text, read_jsonl
from negminer.train.finish import _fmt
from negminer.train.checkpoint import load_checkpoint, load_parts, save_checkpoint, usable_checkpoints, verify
from negminer.train.writes import writing


def state(tr) -> dict:
    epoch, batch = tr.batcher.position(tr.step)
    return {"step": tr.step, "epoch": epoch, "batch_in_epoch": batch, "total_steps": tr.total_steps,
            "scheduler_last_epoch": tr.scheduler.last_epoch, "seconds": tr.seconds,
            "phase_seconds": dict(tr.phases.seconds),
            "counters": vars(tr.counters).copy(), "seed": tr.cfg.seed, "world_size": tr.dist.world,
            "global_batch": tr.global_batch,
            "store_encodes": tr.store.target_encodes if tr.store is not None else 0,
            "guard": tr.guard.state(), "selection": tr.selection.state() if tr.selection else None}


def save(tr) -> None:
    tr._event("on_save")
    if tr.dist.on and tr.store is not None and not tr.store.sharded:  # replicas must not drift (dist.py)
        if not tr.dist.same(tr.store.checksum()):
            raise TrainingDiverged(f"step {tr.step}: the processes' target stores differ (a nondeterministic "
                                   "kernel or a rank that skipped an update); nothing was saved")
    with writing(f"the checkpoint {tr.run_dir / 'checkpoint'}"):
        if tr.dist.main:  # the ranks' states are the same (dist.py): rank 0 writes them
            save_checkpoint(tr.run_dir, tr.model, tr.optimizer, state(tr), tr.parts(), store=tr.store)
        elif tr.store is not None and tr.store.sharded:  # rank 0 collects the rows from every process
            tr.store.save(None)
    tr.dist.barrier()
    tr.last_checkpoint_step = tr.step
    tr._saved_at = time.monotonic()  # wall time, not the injected training clock


def pick_checkpoint(tr):
    """The newest checkpoint whose files all read (checkpoint.py ``verify``); an unreadable newer one is
    named in a warning and the previous one is used; None when there is none; CheckpointError when none reads."""
    errors = []
    for ckpt in usable_checkpoints(tr.run_dir):
        try:
            verify(ckpt)
        except CheckpointError as e:
            errors.append(e)
            continue
        if errors and tr.dist.main:  # a warning: printed under --quiet too
            print(f"negminer: warning: {errors[0]}; resuming from {ckpt.name} instead", file=sys.stderr)
        return ckpt
    if errors:
        raise CheckpointError(errors[0].path, str(errors[0]).split(": ", 1)[1] + (
            f"; {errors[1]}" if len(errors) > 1 else "") + "; no readable checkpoint to resume from")
    return None


def resume(tr) -> bool:
    ckpt = pick_checkpoint(tr)
    if ckpt is None:
        return False
    try:
        st, tensors = load_checkpoint(ckpt, tr.model, tr.optimizer)
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(ckpt, f"does not fit this run ({type(e).__name__}: {e}); same --encoder and "
                              "options as the run that wrote it?") from None
    if st.get("global_batch", tr.global_batch) != tr.global_batch:
        raise ConfigError(f"{ckpt}: saved with a global batch of {st['global_batch']} ({st.get('world_size', 1)} "
                          f"processes); this run has {tr.global_batch} ({tr.dist.world} x --batch-size "
                          f"{tr.cfg.batch_size}): resume with the same product of processes and --batch-size")
    tr.step, tr.seconds = st["step"], st["seconds"]
    tr.phases.seconds.update(st.get("phase_seconds") or {})  # in place: the encoding service holds both
    tr.last_checkpoint_step = tr.step
    if tr.store is not None:
        if tr.store.path is not None:  # reopen the memory map instead of overwriting it
            tr.store = tr.make_store(resume=True)
        tr.store.load(ckpt, st.get("store_encodes", 0))
    load_parts(tr.parts(), tensors, st.get("parts", {}))
    vars(tr.counters).update(st["counters"])
    tr.guard.load(st.get("guard") or {})
    if tr.selection is not None and st.get("selection"):
        tr.selection.load(st["selection"])
    tr.scheduler.last_epoch = st["scheduler_last_epoch"]
    for g, lr0, f in zip(tr.optimizer.param_groups, tr.scheduler.base_lrs, tr.scheduler.lr_lambdas):
        g["lr"] = lr0 * f(tr.scheduler.last_epoch)
    # drop log rows written after the checkpoint (the run was killed between checkpoints)
    if tr.dist.main:
        rows = [r for r in read_jsonl(tr.run_dir / "train_log.jsonl") if r.get("step", 0) <= tr.step]
        atomic_write_text(tr.run_dir / "train_log.jsonl", "".join(_jsonl(r) for r in rows))
    return True


def zero_shot(tr, quiet: bool) -> dict | None:
    """The initial model's metrics on the evaluation split (kept in RUN/zero_shot.json across resumes)."""
    cfg, path = tr.cfg, tr.run_dir / "zero_shot.json"
    if not cfg.zero_shot or cfg.eval_split == "none":
        return None
    if path.exists():
        return json.loads(path.read_text())
    zs = tr.evaluate()
    if tr.dist.main:
        with writing("zero_shot.json", intact="nothing was trained"):
            atomic_write_json(path, zs)
    if not quiet:
        print("zero-shot: " + _fmt(zs), file=sys.stderr)
    return zs


def _jsonl(row: dict) -> str:
    return json.dumps(row) + "\n"
