"""Runs ``negminer`` with fault-injection hooks, for tests that kill, slow or skew a run from outside
(subprocesses, torchrun): ``python tests/driver.py [--sleep S] [--die-at STEP [--die-rank R]]
[--skew-rank R] [--signal-at STEP --signal NAME] [--die-mid-save N] [--poison-at S1,S2 --poison KIND]
train ...``. The training loop has no test switches of its own."""

from __future__ import annotations

import argparse
import os
import sys
import time


class Sleep:
    """Every step takes ``seconds`` longer (inside its timed region): widens the window for a kill."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_step_start(self, trainer, step):
        time.sleep(self.seconds)


class Die:
    """Rank ``rank`` exits at once, as a killed process would, when step ``step`` starts."""

    def __init__(self, step: int, rank: int = 0):
        self.step, self.rank = step, rank

    def on_step_start(self, trainer, step):
        if step == self.step and trainer.dist.rank == self.rank:
            os._exit(17)


class Skew:
    """Rank ``rank``'s store drifts from the others' before a checkpoint (a nondeterministic kernel)."""

    def __init__(self, rank: int):
        self.rank = rank

    def on_save(self, trainer):
        if trainer.dist.rank == self.rank and trainer.store is not None:
            trainer.store.emb[0] += 1.0


class SignalSelf:
    """The process sends itself ``signum`` when step ``step`` starts (a deterministic Ctrl-C / SIGTERM)."""

    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum

    def on_step_start(self, trainer, step):
        if step == self.step:
            os.kill(os.getpid(), self.signum)


def die_mid_save(n: int) -> None:
    """Exit at once during the n-th checkpoint save (1-based), after its model file is written."""
    from negminer.train import checkpoint

    real, count = checkpoint.save_model, [0]

    def save_model(model, path):
        real(model, path)
        count[0] += 1
        if count[0] == n:
            os._exit(9)

    checkpoint.save_model = save_model


class Poison:
    """At the given 0-based steps: the loss becomes NaN (``nan``) or the gradients grow 1e6x (``spike``)."""

    def __init__(self, steps, kind: str):
        self.steps, self.kind, self.wrapped = set(steps), kind, False

    def on_step_start(self, trainer, step):
        if self.wrapped:
            return
        self.wrapped = True
        loss_fn, hook = trainer.loss_fn, self

        class Poisoned:
            def __getattr__(self, name):  # everything else is the real loss's
                return getattr(loss_fn, name)

            def __call__(self, **kw):
                loss = loss_fn(**kw)
                if trainer.step in hook.steps:
                    return loss * (float("nan") if hook.kind == "nan" else 1e6)
                return loss

        trainer.loss_fn = Poisoned()


def main() -> int:
    p = argparse.ArgumentParser()  # its options do not clash with negminer's; the rest is negminer's command line
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--die-at", type=int, default=-1)
    p.add_argument("--die-rank", type=int, default=0)
    p.add_argument("--skew-rank", type=int, default=-1)
    p.add_argument("--signal-at", type=int, default=-1)
    p.add_argument("--signal", default="SIGTERM")
    p.add_argument("--die-mid-save", type=int, default=0)
    p.add_argument("--poison-at", default="")
    p.add_argument("--poison", default="nan", choices=["nan", "spike"])
    a, rest = p.parse_known_args(sys.argv[1:])
    rest = [x for x in rest if x != "--"]  # (torchrun drops it; a plain run keeps it)
    hooks = ([Sleep(a.sleep)] if a.sleep else []) + ([Die(a.die_at, a.die_rank)] if a.die_at >= 0 else []) \
        + ([Skew(a.skew_rank)] if a.skew_rank >= 0 else [])
    if a.signal_at >= 0:
        import signal

        hooks.append(SignalSelf(a.signal_at, getattr(signal, a.signal)))
    if a.poison_at:
        hooks.append(Poison([int(x) for x in a.poison_at.split(",")], a.poison))
    if a.die_mid_save:
        die_mid_save(a.die_mid_save)
    from negminer.cli import main as cli

    return cli(rest, hooks=hooks)


if __name__ == "__main__":
    raise SystemExit(main())
