"""What a refresher sees (``Fresh``: what the step just encoded) and its interface.

After every optimiser step the trainer calls each refresher in turn. A refresher decides which
store rows to re-encode (through ``encode(rows, step)``: the trainer's, no gradient, eval mode,
counted) and how to move the stale rest; it writes through the store, which tells every index
built on it (the oldest-first queue, ANCE's index) which rows changed. ``pool`` is what the
sampler reads (None: every row), set once by ``setup``.
"""

from __future__ import annotations

import torch

from negminer.types import Fresh  # noqa: F401 (re-exported: what a refresher sees)


class Refresher:
    name = "base"
    phase = "refresh"  # the trainer's phase its time is counted in

    def __init__(self):
        self.stats: dict = {}
        self.store, self.pool, self.encode, self.seed = None, None, None, 0

    def setup(self, store, pool: torch.Tensor | None, encode, seed: int = 0) -> None:
        """Bind to the store (before training and after a resume); ``pool``: the sampler's rows."""
        self.store, self.pool, self.encode, self.seed = store, pool, encode, seed

    def pool_rows(self) -> torch.Tensor:
        return torch.arange(self.store.n) if self.pool is None else self.pool

    def after_step(self, fresh: Fresh) -> None:
        raise NotImplementedError

    def state(self) -> tuple[dict, dict]:
        """(tensors, JSON meta) a checkpoint keeps (tensor names prefixed with the refresher's name)."""
        return {}, {}

    def load_state(self, tensors: dict, meta: dict) -> None:
        pass


def relative_change(stale: torch.Tensor, fresh: torch.Tensor) -> float:
    """Mean over rows of ||stale - fresh||^2 / ||fresh||^2 (the store's staleness)."""
    stale, fresh = stale.float().cpu(), fresh.detach().float().cpu()
    return float(((stale - fresh).pow(2).sum(1) / fresh.pow(2).sum(1).clamp(min=1e-12)).mean())
