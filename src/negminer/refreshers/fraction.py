"""Fraction refresh: re-encode ceil(f * M) of the sampler's M rows after every step.

Lindgren et al., NeurIPS 2021: a negative cache stays usable when a small share of it is
re-encoded per step; its staleness is then bounded by 1/f steps (oldest first) or geometric with
mean 1/f (random). ``order`` oldest: rows leave in (age, row) order (store/oldest.py keeps the
queue in step with every store write); random: a seeded choice of distinct rows per step.

Example::  negminer train --negatives cache --refresh-fraction 0.01 --refresh-order oldest
"""

from __future__ import annotations

import math

import torch

from negminer.refreshers.base import Fresh, Refresher
from negminer.rng import generator
from negminer.store.oldest import OldestFirst


class Fraction(Refresher):
    name = "fraction"

    def __init__(self, fraction: float, order: str = "oldest"):
        super().__init__()
        if order not in ("oldest", "random"):
            raise ValueError(f"refresh order must be oldest or random, not {order!r}")
        self.fraction, self.order = fraction, order
        self.queue: OldestFirst | None = None

    def setup(self, store, pool, encode, seed: int = 0) -> None:
        super().setup(store, pool, encode, seed)
        if self.order == "oldest" and (self.queue is None or self.queue.store is not store):
            self.queue = OldestFirst(store, pool)

    def rows(self, step: int) -> torch.Tensor:
        """The rows re-encoded before ``step``."""
        rows = self.pool_rows()
        count = math.ceil(self.fraction * len(rows))
        if not count:
            return torch.zeros(0, dtype=torch.long)
        if self.queue is not None:
            return self.queue.pop(count)
        g = generator(self.seed, step, "fraction")  # O(count) draws, not a permutation of M
        if 4 * count > len(rows):
            return rows[torch.randperm(len(rows), generator=g)[:count]]
        seen: dict[int, None] = {}
        while len(seen) < count:
            for p in torch.randint(len(rows), (2 * count,), generator=g).tolist():
                seen.setdefault(p)
                if len(seen) == count:
                    break
        return rows[torch.tensor(list(seen), dtype=torch.long)]

    def after_step(self, f: Fresh) -> None:
        self.encode(self.rows(f.step + 1), f.step + 1)
