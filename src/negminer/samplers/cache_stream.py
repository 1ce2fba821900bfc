"""Streaming negative cache: a FIFO or LRU queue of recently seen targets.

Lindgren et al., NeurIPS 2021 (streaming variant), in the spirit of MoCo's queue (He et al., CVPR
2020), for corpora too large to cache. The batch's positives enter the queue with their fresh
embeddings (written back by the trainer); when it holds more than ``cache_size`` rows, the oldest
(FIFO: first inserted; LRU: least recently inserted or drawn) leave. Negatives are drawn from the
queue exactly as in ``cache``.

Example::  negminer train --negatives cache-stream --cache-size 4096 --stream-policy lru
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from negminer.samplers.base import Draw, Sampler, stream_draw
from negminer.samplers.proposal import store_proposal


class CacheStreamSampler(Sampler):
    name = "cache-stream"

    @classmethod
    def from_config(cls, cfg, common: dict) -> "CacheStreamSampler":
        return cls(cfg.num_negatives, cache_size=cfg.cache_size or 4096, policy=cfg.stream_policy, **common)

    def __init__(self, k: int, cache_size: int = 4096, policy: str = "fifo", **kw):
        super().__init__(k, **kw)
        if policy not in ("fifo", "lru"):
            raise ValueError(f"stream policy must be fifo or lru, not {policy!r}")
        self.cache_size, self.policy = cache_size, policy
        self.queue: OrderedDict[int, None] = OrderedDict()  # row -> None, oldest first
        self._rows = None  # tensor of the queue, rebuilt after a change

    def pool_size(self, store, n=0):
        return self.cache_size

    @property
    def rows(self) -> torch.Tensor:
        if self._rows is None:
            self._rows = torch.tensor(list(self.queue), dtype=torch.long)
        return self._rows

    def candidates(self, store, q=None):
        return self.rows

    def sample(self, q, batch, store):
        if not self.queue:
            return Draw.empty(len(q))
        return stream_draw(self, q, batch, store, self.rows, rows_sorted=False)

    def _touch(self, rows) -> None:
        for r in rows:
            r = int(r)
            if r in self.queue:
                if self.policy == "lru":
                    self.queue.move_to_end(r)
            else:
                self.queue[r] = None
        while len(self.queue) > self.cache_size:
            self.queue.popitem(last=False)
        self._rows = None

    def update(self, batch, draw, model, store, step, encode=None):
        if self.policy == "lru" and draw.ids.numel():
            self._touch(draw.ids[~draw.mask].tolist())
        self._touch(batch.pos_rows.tolist())

    def proposal(self, q, batch, store):
        if not self.queue:
            return torch.full((len(q), store.n), float("-inf"))
        return store_proposal(self, q, batch, store, self.rows)

    def state(self):
        return {"stream.queue": self.rows}, {"policy": self.policy}

    def load_state(self, tensors, meta):
        self.queue = OrderedDict((int(r), None) for r in tensors["stream.queue"])
        self._rows = None
