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

Refresh: drawn targets (and the batch's positives) are written back with their fresh embeddings,
and a fraction of the cache is re-encoded each step, oldest first or at random.

Example::  negminer train --negatives cache --num-negatives 8 --refresh-fraction 0.01 --loss cache-surrogate
"""

from __future__ import annotations

import math

import torch

from negminer.samplers.base import Sampler, excluded, scored_draw, write_back


class CacheSampler(Sampler):
    name = "cache"

    def __init__(self, k: int, cache_size: int = 0, refresh_fraction: float = 0.0, refresh_order: str = "oldest",
                 seed: int = 0, **kw):
        super().__init__(k, **kw)
        self.cache_size, self.refresh_fraction, self.refresh_order, self.seed = cache_size, refresh_fraction, refresh_order, seed
        self.rows: torch.Tensor | None = None

    def setup(self, store, model, step):
        if self.rows is None:
            m = store.n if self.cache_size <= 0 else min(self.cache_size, store.n)
            g = torch.Generator().manual_seed(self.seed)
            self.rows = torch.arange(store.n) if m == store.n else torch.randperm(store.n, generator=g)[:m].sort().values
        never = self.rows[store.age[self.rows] < 0]
        if len(never):
            store.encode(never, model, step)

    def sample(self, q, batch, store):
        all_rows = len(self.rows) == store.n
        return scored_draw(self, q, None if all_rows else self.rows, store.embeddings(None if all_rows else self.rows),
                           batch, store.n)

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
        scores = (q.float() @ store.embeddings(self.rows).T) * self.scale(batch)
        logits[:, self.rows] = scores
        return logits.masked_fill(excluded(None, batch, store.n), -math.inf).log_softmax(-1)

    def state(self):
        return {"cache.rows": self.rows.clone()}, {}

    def load_state(self, tensors, meta):
        self.rows = tensors["cache.rows"]
