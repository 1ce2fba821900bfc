"""Uniform negatives with the log-Q correction of sampled softmax.

Bengio & Senecal, "Adaptive Importance Sampling to Accelerate Training of a Neural Probabilistic
Language Model", IEEE TNN 2008; Jean et al., ACL 2015.  Q(j) = 1/N, so each negative logit gets
s_j/tau - log(k/N); positives and duplicates drawn by chance are masked.

Example::  negminer train --negatives uniform --num-negatives 16
"""

from __future__ import annotations

import math

import torch

from negminer.samplers.base import Batch, Draw, Sampler, excluded


class UniformSampler(Sampler):
    name = "uniform"

    def sample(self, q, batch: Batch, store) -> Draw:
        b = len(q)
        ids = torch.randint(store.n, (b, self.k), generator=batch.generator)
        mask = torch.zeros(b, self.k, dtype=torch.bool)
        for i, ex in enumerate(batch.exclude):
            for j in range(self.k):
                mask[i, j] = int(ids[i, j]) in ex
        return Draw(ids, torch.full((b, self.k), -math.log(store.n)), mask)

    def proposal(self, q, batch, store):
        logq = torch.full((len(q), store.n), -math.log(store.n))
        return logq.masked_fill(excluded(None, batch, store.n), -math.inf)
