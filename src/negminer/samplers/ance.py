"""ANCE: negatives from an index that is rebuilt every R steps.

Xiong et al., "Approximate Nearest Neighbor Negative Contrastive Learning for Dense Text
Retrieval", ICLR 2021. Every R steps re-encode all targets and rebuild the index (FAISS flat inner
product if installed, else exact search); between refreshes the index is stale. For each query,
take the top-K of the index (positives and duplicates removed) and draw k of them uniformly.

Example::  negminer train --negatives ance --refresh-every 100 --ance-top 100
"""

from __future__ import annotations

import math

import torch

from negminer.samplers.base import Draw, Sampler, excluded, margin_mask


class AnceSampler(Sampler):
    name = "ance"

    def __init__(self, k: int, refresh_every: int = 100, top: int = 100, **kw):
        super().__init__(k, **kw)
        self.refresh_every, self.top, self.index = max(1, refresh_every), top, None

    def setup(self, store, model, step):
        if int(store.age.min()) < 0:
            store.encode(range(store.n), model, step)
        self._build(store)

    def _build(self, store):
        try:
            import faiss

            self.index = faiss.IndexFlatIP(store.dim)
            self.index.add(store.embeddings().numpy())
        except ModuleNotFoundError:
            self.index = None

    def _search(self, q, store, k):
        if self.index is not None:
            s, i = self.index.search(q.float().contiguous().numpy(), k)
            return torch.from_numpy(s), torch.from_numpy(i).long()
        return (q.float() @ store.embeddings().T).topk(k, dim=1)

    def sample(self, q, batch, store):
        b = len(q)
        extra = max(len(e) for e in batch.exclude)
        s, ids = self._search(q, store, min(store.n, self.top + extra))
        bad = excluded(ids.flatten(), batch, store.n).view(b, -1, ids.shape[1])  # [B, B, K]
        bad = bad[torch.arange(b), torch.arange(b)] | margin_mask(s, q, batch, self.margin)
        keys = torch.rand(ids.shape, generator=batch.generator).masked_fill(bad, math.inf)
        rank = bad.cumsum(1)  # keep the first `top` usable candidates only
        keys = keys.masked_fill(torch.arange(ids.shape[1]) - rank >= self.top, math.inf)
        pick = keys.topk(min(self.k, ids.shape[1]), dim=1, largest=False).indices
        return Draw(ids.gather(1, pick), None, torch.isinf(keys.gather(1, pick)))

    def update(self, batch, draw, fresh, model, store, step):
        if step % self.refresh_every == 0:
            store.encode(range(store.n), model, step)
            self._build(store)

    def proposal(self, q, batch, store):
        s, ids = self._search(q, store, min(store.n, self.top + max(len(e) for e in batch.exclude)))
        logq = torch.full((len(q), store.n), -math.inf)
        for i in range(len(q)):
            keep = [int(j) for j in ids[i] if int(j) not in batch.exclude[i]][: self.top]
            logq[i, keep] = -math.log(len(keep))
        return logq
