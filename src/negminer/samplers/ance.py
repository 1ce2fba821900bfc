"""ANCE: negatives from an index that is rebuilt every R steps.

Xiong et al., "Approximate Nearest Neighbor Negative Contrastive Learning for Dense Text
Retrieval", ICLR 2021. Every R steps the full refresher re-encodes all targets (refreshers/full.py)
and the index (FAISS flat inner product if installed, else exact search over the store) is rebuilt
before the next draw: the store tells it that rows changed. Between refreshes it is stale. For each
query, take the top-K of the index (positives and duplicates removed) and draw k of them uniformly.

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
        self.top, self.index, self.dirty, self._watched = top, None, True, None

    def pool_size(self, store, n=0):
        return min(self.top, store.n)

    def setup(self, store, model, step, encode=None):
        if int(store.age.min()) < 0:
            encode(torch.arange(store.n), step)
        if self._watched is not store:  # any write (a refresher's) makes the index stale: rebuilt when next read
            store.listeners.append(self._changed)
            self._watched = store
        self._build(store)

    def _changed(self, rows, step):
        self.dirty = True

    def _build(self, store):
        self.dirty = False
        try:
            import faiss

            self.index = faiss.IndexFlatIP(store.dim)
            for s in range(0, store.n, 1 << 18):
                self.index.add(store.embeddings(torch.arange(s, min(store.n, s + (1 << 18)))).numpy())
        except ModuleNotFoundError:
            self.index = None

    def _search(self, q, store, k):
        if self.dirty:
            self._build(store)
        if self.index is not None:
            s, i = self.index.search(q.float().cpu().contiguous().numpy(), k)
            return torch.from_numpy(s), torch.from_numpy(i).long()
        return (q.float().cpu() @ store.embeddings().T).topk(k, dim=1)

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
