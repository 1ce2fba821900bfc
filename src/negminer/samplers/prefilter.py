"""Approximate top-K prefilter for the negative cache: an inverted-file (IVF) index over cached embeddings.

Lindgren et al. (NeurIPS 2021) score every cached target; for M in the millions a cheaper first stage
keeps only each query's K best-scoring candidates, and Gumbel-Max then samples among those
(a truncated softmax: log q_j = s_j/tau - logsumexp_{i in top-K} s_i/tau).

IVF (Jegou et al., "Product Quantization for Nearest Neighbor Search", TPAMI 2011): k-means
partitions the cache into ``nlist`` lists; a query probes its ``nprobe`` nearest centroids and scores
only the targets in those lists, with their *current* cached embeddings. Centroids and list
assignment are rebuilt every ``rebuild_every`` steps (in between, refreshed targets keep their
list); both are kept in checkpoints so resume is exact. ``nprobe >= nlist`` = exact top-K.

Cost per query: nlist * d + (M * nprobe / nlist) * d instead of M * d.

Example::  negminer train --negatives cache --prefilter-top 256 --prefilter-nprobe 8
"""

from __future__ import annotations

import math

import torch

from negminer.rng import generator


class IVFPrefilter:
    def __init__(self, top: int, nlist: int = 0, nprobe: int = 8, rebuild_every: int = 100, iters: int = 10,
                 seed: int = 0):
        self.top, self.nlist, self.nprobe, self.rebuild_every, self.iters, self.seed = \
            top, nlist, nprobe, max(1, rebuild_every), iters, seed
        self.centroids: torch.Tensor | None = None   # [L, d]
        self.order: torch.Tensor | None = None       # [M] cache positions sorted by list
        self.offsets: torch.Tensor | None = None     # [L + 1] list boundaries in ``order``
        self.built_step = -1

    def build(self, emb_fn, m: int, step: int) -> None:
        """k-means (seeded, on at most 64 points per list) over the ``m`` cached embeddings, read in
        chunks with ``emb_fn(positions)`` (float32 [len, d]); assign every row."""
        nlist = min(m, self.nlist or max(1, round(math.sqrt(m))))
        g = generator(self.seed, step, "prefilter")
        train = emb_fn(torch.randperm(m, generator=g)[: 64 * nlist].sort().values)
        c = train[torch.randperm(len(train), generator=g)[:nlist]].clone()
        for _ in range(self.iters):
            a = (train @ c.T).argmax(1)  # inner-product assignment, as the search uses
            sums = torch.zeros_like(c).index_add_(0, a, train)
            counts = torch.bincount(a, minlength=nlist).unsqueeze(1)
            c = torch.where(counts > 0, sums / counts.clamp(min=1), c)
        assign = torch.cat([(emb_fn(torch.arange(s, min(m, s + 65536))) @ c.T).argmax(1) for s in range(0, m, 65536)])
        self.centroids, self.order = c, assign.argsort(stable=True)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(assign, minlength=nlist).cumsum(0)])
        self.built_step = step

    def maybe_rebuild(self, emb_fn, m: int, step: int) -> None:
        if self.centroids is None or step - self.built_step >= self.rebuild_every:
            self.build(emb_fn, m, step)

    def search(self, q: torch.Tensor, emb_fn) -> tuple[torch.Tensor, torch.Tensor]:
        """Per query the ``top`` best cache positions among the probed lists and their scores
        [B, top]; -inf where fewer candidates exist. ``emb_fn(positions)`` gives cached embeddings.
        Batched by list: each probed list is read once and scored against the queries probing it."""
        top, q = self.top, q.float()
        b = len(q)
        probe = (q @ self.centroids.T).topk(min(self.nprobe, len(self.centroids)), dim=1).indices  # [B, P]
        p = probe.shape[1]
        val = torch.full((b * p, top), -math.inf)  # best ``top`` per (query, probed list) pair
        pos = torch.zeros(b * p, top, dtype=torch.long)
        lists, counts = probe.flatten().unique(return_counts=True)
        pairs = probe.flatten().argsort(stable=True).split(counts.tolist())
        for l, pr in zip(lists.tolist(), pairs):
            members = self.order[self.offsets[l]:self.offsets[l + 1]]
            if not len(members):
                continue
            v, j = (q[pr // p] @ emb_fn(members).T).topk(min(top, len(members)), dim=1)
            val[pr, :v.shape[1]], pos[pr, :v.shape[1]] = v, members[j]
        val, j = val.view(b, p * top).topk(top, dim=1)
        pos = pos.view(b, p * top).gather(1, j).masked_fill(torch.isinf(val), 0)
        return pos, val

    def state(self, prefix: str) -> dict:
        if self.centroids is None:
            return {}
        return {f"{prefix}.centroids": self.centroids, f"{prefix}.order": self.order,
                f"{prefix}.offsets": self.offsets, f"{prefix}.built_step": torch.tensor([self.built_step])}

    def load_state(self, t: dict, prefix: str) -> None:
        if f"{prefix}.centroids" in t:
            self.centroids, self.order, self.offsets = (t[f"{prefix}.{k}"] for k in ("centroids", "order", "offsets"))
            self.built_step = int(t[f"{prefix}.built_step"][0])
