"""Mined negatives: each query's fixed list of hard negatives, k drawn per step from it.

The workflow most users follow today (sentence-transformers ``mine_hard_negatives`` then
MultipleNegativesRankingLoss; FlagEmbedding's hard-negative mining script; DPR's BM25 negatives,
Karpukhin et al., EMNLP 2020): mine once with the starting model, then train on the lists. The lists
come from the data (JSONL ``negative`` fields) or from a file (``--mined-file``, written by
``negminer mine``, or any JSONL with ``query_id`` + ``neg_ids``, or ``query`` + ``neg`` texts; read by
data/mined.py).
Each step draws k distinct entries of the query's list uniformly; positives and duplicates are
masked; a list shorter than k leaves masked slots. No proposal over all targets: uncorrected.

Example::  negminer mine --model minilm --data D --out neg.jsonl
           negminer train --data D --negatives mined --mined-file neg.jsonl --share-negatives
"""

from __future__ import annotations

import torch

from negminer.samplers.base import Batch, Draw, Sampler


class MinedSampler(Sampler):
    name = "mined"
    needs_store = False

    @classmethod
    def from_config(cls, cfg, common: dict, mined: list | None = None) -> "MinedSampler":
        return cls(cfg.num_negatives, mined, **common)

    def __init__(self, k: int, lists: list[list[int]] | None = None, **kw):
        super().__init__(k, **kw)
        self.lists = [torch.as_tensor(x, dtype=torch.long) for x in (lists or [])]

    def pool_size(self, store, n=0):
        return max((len(x) for x in self.lists), default=0) + 1

    def sample(self, q, batch: Batch, store) -> Draw:
        if batch.queries is None:
            raise ValueError("mined negatives need Batch.queries (the training query of each row)")
        b, k = len(q), self.k
        ids = torch.zeros(b, k, dtype=torch.long)
        short = torch.ones(b, k, dtype=torch.bool)
        for i, qi in enumerate(batch.queries.tolist()):
            lst = self.lists[qi]
            n = min(k, len(lst))
            if n:
                ids[i, :n] = lst[torch.randperm(len(lst), generator=batch.generator)[:n]]
                short[i, :n] = False
        mask = short | batch.excl.contains(ids)
        return Draw(ids.masked_fill(mask, 0), mask)
