"""Shared pieces for sampler tests: a store of known embeddings, a fake tower, batches."""

from __future__ import annotations

import torch

from negminer.samplers import Batch, Exclusions
from negminer.store import TargetStore


class Model:
    """Target text i tokenises to [i] and embeds to E[i]; counts encodes."""

    target_max_length = 1

    def __init__(self, E):
        self.E, self.calls, self.target_tower = E, 0, self

    def target_token_ids(self, texts):
        return [[int(t)] for t in texts]

    def encode_target_ids(self, ids, batch_size=128, progress=False):
        self.calls += len(ids)
        return self.E[[x[0] for x in ids]]


def unit(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)


def make_store(E, dtype="fp32", fill=True, **kw):
    n, d = E.shape
    store = TargetStore([str(i) for i in range(n)], [str(i) for i in range(n)], d, dtype=dtype, **kw)
    if fill:
        store.write(torch.arange(n), E, 0)
    return store, Model(E)


def encoder(store, model):
    """The trainer's ``encode(rows, step)`` for sampler.setup / update."""
    return lambda rows, step: store.encode(rows, model, step)


def batch(E, pos, exclude=None, step=0, scale=20.0, seed=None):
    pos = torch.as_tensor(pos)
    exclude = exclude or [{int(p)} for p in pos]
    g = torch.Generator().manual_seed(step if seed is None else seed)
    return Batch(step, pos, Exclusions(exclude, len(E)), E[pos], g, scale)
