"""Negative cache: Gumbel-Max negatives from stale target embeddings, refreshed a little at a time.

Lindgren, Reddi, Guo, Kumar, "Efficient Training of Retrieval Models using Negative Cache",
NeurIPS 2021.  Keep embeddings e_j of M targets (M up to N) from earlier steps. For each query,
score the cache, s~_j = <q, e_j>, draw k negatives from softmax(s~ / tau_s) by Gumbel-Max, re-encode
only those with gradient, and train on fresh scores, either with

  * the paper's surrogate (``--loss cache-surrogate``), unbiased for the full-softmax gradient when
    the cache is fresh and tau_s = tau:
        L = stopgrad(1 - p_pos) * mean_j (s_j/tau - s_pos/tau),
        p_pos = exp(s_pos/tau) / (exp(s_pos/tau) + sum_{j in cache} exp(s~_j/tau)),  j drawn with replacement
  * or a sampled softmax with log-Q correction (``--loss softmax``).

Optional approximate top-K prefilter (``--prefilter-top K``, prefilter.py): sample among each
query's K best cached targets found by an IVF index (truncated softmax) instead of scoring all M.

Refresh: drawn targets (and the batch's positives) are written back with their fresh embeddings,
and a fraction of the cache is re-encoded each step, oldest first or at random.

Example::  negminer train --negatives cache --num-negatives 8 --refresh-fraction 0.01 --loss cache-surrogate
"""

from __future__ import annotations

import math

import torch

from negminer.samplers.base import Sampler, excluded, scored_draw, write_back
from negminer.samplers.prefilter import IVFPrefilter


class CacheSampler(Sampler):
    name = "cache"

    def __init__(self, k: int, cache_size: int = 0, refresh_fraction: float = 0.0, refresh_order: str = "oldest",
                 seed: int = 0, prefilter_top: int = 0, prefilter_nprobe: int = 8, prefilter_rebuild: int = 100,
                 prefilter_nlist: int = 0, **kw):
        super().__init__(k, **kw)
        self.cache_size, self.refresh_fraction, self.refresh_order, self.seed = cache_size, refresh_fraction, refresh_order, seed
        self.rows: torch.Tensor | None = None
        self.prefilter = IVFPrefilter(prefilter_top, nlist=prefilter_nlist, nprobe=prefilter_nprobe,
                                      rebuild_every=prefilter_rebuild, seed=seed) if prefilter_top > 0 else None

    def setup(self, store, model, step):
        if self.rows is None:
            m = store.n if self.cache_size <= 0 else min(self.cache_size, store.n)
            g = torch.Generator().manual_seed(self.seed)
            self.rows = torch.arange(store.n) if m == store.n else torch.randperm(store.n, generator=g)[:m].sort().values
        never = self.rows[store.age[self.rows] < 0]
        if len(never):
            store.encode(never, model, step)

    def _candidates(self, q, store, step):
        """Per query: the prefilter's top-K store rows and their scores [B, K] (-inf: padding)."""
        self.prefilter.maybe_rebuild(lambda: store.embeddings(self.rows), step)
        pos, val = self.prefilter.search(q, lambda p: store.embeddings(self.rows[p]))
        return self.rows[pos], val

    def sample(self, q, batch, store):
        if self.prefilter is not None:
            return scored_draw(self, q, *self._candidates(q, store, batch.step), batch, store.n)
        rows = None if len(self.rows) == store.n else self.rows
        return scored_draw(self, q, rows, q.float() @ store.embeddings(rows).T, batch, store.n)

    def update(self, batch, draw, fresh, model, store, step):
        stats = write_back(store, batch, draw, fresh, step)
        count = math.ceil(self.refresh_fraction * len(self.rows)) if self.refresh_fraction > 0 else 0
        if count:
            if self.refresh_order == "oldest":
                rows = store.oldest(count, among=self.rows)
            else:
                g = torch.Generator().manual_seed(self.seed * 7919 + step)
                rows = self.rows[torch.randperm(len(self.rows), generator=g)[:count]]
            store.encode(rows, model, step)
        self.last_stats = stats

    def proposal(self, q, batch, store):
        logits = torch.full((len(q), store.n), -math.inf)
        if self.prefilter is not None:  # truncated to the prefilter's candidates
            cand, s = self._candidates(q, store, batch.step)  # padding (-inf) may repeat a row: keep the max
            logits.scatter_reduce_(1, cand, s * self.scale(batch), reduce="amax")
        else:
            logits[:, self.rows] = (q.float() @ store.embeddings(self.rows).T) * self.scale(batch)
        return logits.masked_fill(excluded(None, batch, store.n), -math.inf).log_softmax(-1)

    def state(self):
        t = {"cache.rows": self.rows.clone()}
        if self.prefilter is not None:
            t.update(self.prefilter.state("cache.prefilter"))
        return t, {}

    def load_state(self, tensors, meta):
        self.rows = tensors["cache.rows"]
        if self.prefilter is not None:
            self.prefilter.load_state(tensors, "cache.prefilter")
