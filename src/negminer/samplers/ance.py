"""ANCE: negatives from an index that is rebuilt every R steps.

Xiong et al., "Approximate Nearest Neighbor Negative Contrastive Learning for Dense Text
Retrieval", ICLR 2021. Every R steps the full refresher re-encodes all targets (refreshers/full.py)
and the index is the store itself, searched exactly by the store's streaming score pass (a running top-K
over chunks): what was written to the store since the last refresh is what is searched. Between
refreshes it is stale. For each query, take the top-K (positives and duplicates removed) and draw k of
them uniformly. (A FAISS flat index took 2-3x the time of this pass for K = 100 on CPU.)

Example::  negminer train --negatives ance --refresh-every 100 --ance-top 100
"""

from __future__ import annotations

import math

import torch

from negminer.samplers.base import Draw, Sampler


class AnceSampler(Sampler):
    name = "ance"

    @classmethod
    def from_config(cls, cfg, common: dict) -> "AnceSampler":
        return cls(cfg.num_negatives, top=cfg.ance_top, **common)

    def __init__(self, k: int, top: int = 100, **kw):
        super().__init__(k, **kw)
        self.top = top

    def pool_size(self, store, n=0):
        return min(self.top, store.n)

    def setup(self, store, model, step, encode=None):
        if int(store.age.min()) < 0:
            encode(torch.arange(store.n), step)

    @staticmethod
    def _search(q, store, k):
        """Exact top-``k`` scores and rows per query over the store, in its compute dtype, by chunks."""
        best_s = best_i = None
        for start, scores in store.score_chunks(q):
            s, i = scores.float().topk(min(k, scores.shape[1]), dim=1)
            i += start
            if best_s is not None:
                s, j = torch.cat([best_s, s], 1).topk(min(k, best_s.shape[1] + s.shape[1]), dim=1)
                i = torch.cat([best_i, i], 1).gather(1, j)
            best_s, best_i = s, i
        return best_s.cpu(), best_i.cpu()

    def sample(self, q, batch, store):
        extra = int(torch.bincount(batch.excl.qi, minlength=len(q)).max()) if len(batch.excl.qi) else 0
        s, ids = self._search(q, store, min(store.n, self.top + extra))
        bad = batch.excl.contains(ids)
        over = self.margin_over(q.cpu(), batch)
        if over is not None:
            bad |= s > over.unsqueeze(1)
        keys = torch.rand(ids.shape, generator=batch.generator).masked_fill(bad, math.inf)
        rank = bad.cumsum(1)  # keep the first `top` usable candidates only
        keys = keys.masked_fill(torch.arange(ids.shape[1]) - rank >= self.top, math.inf)
        pick = keys.topk(min(self.k, ids.shape[1]), dim=1, largest=False).indices
        return Draw(ids.gather(1, pick), torch.isinf(keys.gather(1, pick)), drop=self.margin_drop(q, batch, store))

    def proposal(self, q, batch, store):
        extra = int(torch.bincount(batch.excl.qi, minlength=len(q)).max()) if len(batch.excl.qi) else 0
        s, ids = self._search(q, store, min(store.n, self.top + extra))
        bad = batch.excl.contains(ids)
        keep = (~bad).long().cumsum(1) <= self.top
        keep &= ~bad
        logq = torch.full((len(q), store.n), -math.inf)
        logq.scatter_(1, ids, torch.where(keep, -torch.log(keep.sum(1, keepdim=True).float()), torch.full_like(s, -math.inf)))
        return logq
