"""Runs ``negminer`` with fault-injection hooks, for tests that kill, slow or skew a run from outside
(subprocesses, torchrun): ``python tests/driver.py [--sleep S] [--die-at STEP [--die-rank R]]
[--skew-rank R] train ...``. The training loop has no test switches of its own."""

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


def main() -> int:
    p = argparse.ArgumentParser()  # its options do not clash with negminer's; the rest is negminer's command line
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--die-at", type=int, default=-1)
    p.add_argument("--die-rank", type=int, default=0)
    p.add_argument("--skew-rank", type=int, default=-1)
    a, rest = p.parse_known_args(sys.argv[1:])
    rest = [x for x in rest if x != "--"]  # (torchrun drops it; a plain run keeps it)
    hooks = ([Sleep(a.sleep)] if a.sleep else []) + ([Die(a.die_at, a.die_rank)] if a.die_at >= 0 else []) \
        + ([Skew(a.skew_rank)] if a.skew_rank >= 0 else [])
    from negminer.cli import main as cli

    return cli(rest, hooks=hooks)


if __name__ == "__main__":
    raise SystemExit(main())
