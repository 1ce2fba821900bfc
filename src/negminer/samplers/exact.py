"""Exact softmax negatives: the oracle every approximation is measured against.

Re-encode all N targets with the current model every R steps (R=1: truly exact), then draw k
negatives from softmax(q . g(t) / tau_s) with Gumbel-top-k (``selection='sample'``, log-Q given) or
take the exact top-k (``selection='topk'``, no correction). Costs N target encodes per refresh: only
for small N.

Example::  negminer train --negatives exact --refresh-every 1 --num-negatives 8
"""

from __future__ import annotations

import math

from negminer.samplers.base import Draw, Sampler, excluded, margin_mask, scored_draw


class ExactSampler(Sampler):
    name = "exact"

    def __init__(self, k: int, refresh_every: int = 1, selection: str = "sample", **kw):
        super().__init__(k, **kw)
        self.refresh_every, self.selection = max(1, refresh_every), selection

    def setup(self, store, model, step):
        if int(store.age.min()) < 0:  # never filled (a resumed run restores the store instead)
            store.encode(range(store.n), model, step)

    def _refresh(self, store, model, step):
        if step % self.refresh_every == 0:
            store.encode(range(store.n), model, step)

    def sample(self, q, batch, store):
        scores = q.float() @ store.embeddings().T
        if self.selection == "topk":
            bad = excluded(None, batch, store.n) | margin_mask(scores, q, batch, self.margin)
            ids = scores.masked_fill(bad, -math.inf).topk(self.k, dim=1).indices
            return Draw(ids, None, bad.gather(1, ids))
        return scored_draw(self, q, None, scores, batch, store.n)

    def update(self, batch, draw, fresh, model, store, step):
        self._refresh(store, model, step)  # step is the next step's index

    def proposal(self, q, batch, store):
        logits = (q.float() @ store.embeddings().T) * self.scale(batch)
        return logits.masked_fill(excluded(None, batch, store.n), -math.inf).log_softmax(-1)
