"""Streaming negative cache: a FIFO or LRU queue of recently seen targets.

Lindgren et al., NeurIPS 2021 (streaming variant), in the spirit of MoCo's queue (He et al., CVPR
2020), for corpora too large to cache. The batch's positives enter the queue with their fresh
embeddings; when it holds more than ``cache_size`` rows, the oldest (FIFO: first inserted; LRU: least
recently inserted or drawn) leave. Negatives are drawn from the queue exactly as in ``cache``.

Example::  negminer train --negatives cache-stream --cache-size 4096 --stream-policy lru
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch

from negminer.samplers.base import Draw, Sampler, excluded, scored_draw, write_back


class CacheStreamSampler(Sampler):
    name = "cache-stream"

    def __init__(self, k: int, cache_size: int = 4096, policy: str = "fifo", **kw):
        super().__init__(k, **kw)
        if policy not in ("fifo", "lru"):
            raise ValueError(f"stream policy must be fifo or lru, not {policy!r}")
        self.cache_size, self.policy = cache_size, policy
        self.queue: OrderedDict[int, None] = OrderedDict()  # row -> None, oldest first

    @property
    def rows(self) -> torch.Tensor:
        return torch.tensor(list(self.queue), dtype=torch.long)

    def sample(self, q, batch, store):
        if not self.queue:
            return Draw.empty(len(q))
        rows = self.rows
        return scored_draw(self, q, rows, q.float() @ store.embeddings(rows).T, batch, store.n)

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

    def update(self, batch, draw, fresh, model, store, step):
        stats = write_back(store, batch, draw, fresh, step)
        if self.policy == "lru" and draw.ids.numel():
            self._touch(draw.ids.flatten().tolist())
        self._touch(batch.pos_rows.tolist())
        self.last_stats = stats

    def proposal(self, q, batch, store):
        logits = torch.full((len(q), store.n), -math.inf)
        if self.queue:
            rows = self.rows
            logits[:, rows] = (q.float() @ store.embeddings(rows).T) * self.scale(batch)
        return logits.masked_fill(excluded(None, batch, store.n), -math.inf).log_softmax(-1)

    def state(self):
        return {"stream.queue": self.rows}, {}

    def load_state(self, tensors, meta):
        self.queue = OrderedDict((int(r), None) for r in tensors["stream.queue"])
