"""Exact softmax negatives: the oracle every approximation is measured against.

The store holds all N targets, re-encoded with the current model every R steps by the full
refresher (R=1: truly exact; refreshers/full.py), and the sampler draws k
negatives from softmax(q . g(t) / tau_s) in one streaming pass (``selection='sample'``: Gumbel-top-k
with inclusion probabilities, or with replacement) or take the exact top-k (``selection='topk'``,
no correction). Costs N target encodes per refresh: only for small N.

Example::  negminer train --negatives exact --refresh-every 1 --num-negatives 8
"""

from __future__ import annotations

import torch

from negminer.samplers.base import Sampler, stream_draw
from negminer.samplers.proposal import store_proposal


class ExactSampler(Sampler):
    name = "exact"

    @classmethod
    def from_config(cls, cfg, common: dict) -> "ExactSampler":
        return cls(cfg.num_negatives, selection=cfg.selection, **common)

    def __init__(self, k: int, selection: str = "sample", **kw):
        super().__init__(k, **kw)
        self.selection = selection

    def setup(self, store, model, step, encode=None):
        if int(store.age.min()) < 0:  # never filled (a resumed run restores the store instead)
            encode(torch.arange(store.n), step)

    def sample(self, q, batch, store):
        return stream_draw(self, q, batch, store, None, selection=self.selection)

    def proposal(self, q, batch, store):
        return store_proposal(self, q, batch, store, None)
