"""Negative cache: Gumbel-Max negatives from stale target embeddings, refreshed a little at a time.

Lindgren, Reddi, Guo, Kumar, "Efficient Training of Retrieval Models using Negative Cache",
NeurIPS 2021.  Keep embeddings e_j of M targets (M up to N) from earlier steps. For each query,
score the cache, s~_j = <q, e_j>, draw k negatives from softmax(s~ / tau_s) (Gumbel-top-k in one
streaming pass, samplers/gumbel.py), re-encode only those with gradient, and train on fresh scores,
either with the paper's surrogate (``--loss cache-surrogate``, draws with replacement) or with the
sampled softmax whose weights pi_j (inclusion probabilities) make it unbiased (``--loss softmax``).

Optional approximate top-K prefilter (``--prefilter-top K``, prefilter.py): sample among each
query's K best cached targets found by an IVF index (a truncated softmax) instead of scoring all M.

Refresh (refreshers/): by default the drawn targets and the batch's positives are written back
(write-back) and, with --refresh-fraction, a share of the cache is re-encoded each step (fraction);
``--refresh`` adds Nystrom updates or periodic full refreshes.

Example::  negminer train --negatives cache --num-negatives 8 --refresh-fraction 0.01
"""

from __future__ import annotations

import torch

from negminer.rng import generator
from negminer.samplers.base import Sampler, dense_draw, stream_draw
from negminer.samplers.prefilter import IVFPrefilter
from negminer.samplers.proposal import store_proposal


class CacheSampler(Sampler):
    name = "cache"

    @classmethod
    def from_config(cls, cfg, common: dict) -> "CacheSampler":
        return cls(cfg.num_negatives, cache_size=cfg.cache_size, seed=cfg.seed, prefilter_top=cfg.prefilter_top,
                   prefilter_nprobe=cfg.prefilter_nprobe, prefilter_nlist=cfg.prefilter_nlist,
                   prefilter_rebuild=cfg.prefilter_rebuild, **common)

    def __init__(self, k: int, cache_size: int = 0, seed: int = 0, prefilter_top: int = 0, prefilter_nprobe: int = 8,
                 prefilter_rebuild: int = 100, prefilter_nlist: int = 0, **kw):
        super().__init__(k, **kw)
        self.cache_size, self.seed = cache_size, seed
        self.rows: torch.Tensor | None = None  # sorted store rows in the cache (None until setup)
        self.full = False
        self.prefilter = IVFPrefilter(prefilter_top, nlist=prefilter_nlist, nprobe=prefilter_nprobe,
                                      rebuild_every=prefilter_rebuild, seed=seed) if prefilter_top > 0 else None

    def pool_size(self, store, n=0):
        return store.n if self.cache_size <= 0 else min(self.cache_size, store.n)

    def setup(self, store, model, step, encode=None):
        if self.rows is None:
            m = self.pool_size(store)
            g = generator(self.seed, 0, "cache-rows")
            self.rows = torch.arange(store.n) if m == store.n else torch.randperm(store.n, generator=g)[:m].sort().values
        self.full = len(self.rows) == store.n
        never = self.rows[store.age[self.rows] < 0]
        if len(never):
            encode(never, step)

    def pool_rows(self, store):
        return None if self.full else self.rows

    def _candidates(self, q, store, step):
        """Per query: the prefilter's top-K store rows and their scores [B, K] (-inf: padding)."""
        self.prefilter.maybe_rebuild(lambda p=None: store.embeddings(self.rows if p is None else self.rows[p]),
                                     len(self.rows), step)
        pos, val = self.prefilter.search(q.cpu(), lambda p: store.embeddings(self.rows[p]))
        return self.rows[pos], val

    def candidates(self, store, q=None):
        if self.prefilter is None or q is None or self.prefilter.centroids is None:
            return self.pool_rows(store)
        pos, val = self.prefilter.search(q.cpu(), lambda p: store.embeddings(self.rows[p]))
        return self.rows[pos].masked_fill(torch.isinf(val), -1)

    def sample(self, q, batch, store):
        if self.prefilter is not None:
            return dense_draw(self, q.cpu(), batch, *self._candidates(q, store, batch.step),
                              drop=self.margin_drop(q, batch, store, None if self.full else self.rows))
        return stream_draw(self, q, batch, store, None if self.full else self.rows)

    def proposal(self, q, batch, store):
        if self.prefilter is not None:  # truncated to the prefilter's candidates
            cand, s = self._candidates(q, store, batch.step)
            return store_proposal(self, q, batch, store, cand, s)
        return store_proposal(self, q, batch, store, None if self.full else self.rows)

    def state(self):
        t = {"cache.rows": self.rows.clone()}
        if self.prefilter is not None:
            t.update(self.prefilter.state("cache.prefilter"))
        return t, {"cache_size": len(self.rows)}

    def load_state(self, tensors, meta):
        self.rows = tensors["cache.rows"]
        if self.prefilter is not None:
            self.prefilter.load_state(tensors, "cache.prefilter")
