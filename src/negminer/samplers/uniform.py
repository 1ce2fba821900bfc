"""Uniform negatives with the log-Q correction of sampled softmax.

Bengio & Senecal, "Adaptive Importance Sampling to Accelerate Training of a Neural Probabilistic
Language Model", IEEE TNN 2008; Jean et al., ACL 2015.  k draws with replacement, Q(j) = 1/N, so
each draw's expected count is pi_j = k/N and its logit gets s_j/tau - log(k/N); positives and
duplicates drawn by chance are masked.

Example::  negminer train --negatives uniform --num-negatives 16
"""

from __future__ import annotations

import math

import torch

from negminer.samplers.base import Batch, Draw, Sampler


class UniformSampler(Sampler):
    name = "uniform"
    needs_store = False  # it reads N only (from the batch's exclusions)

    @classmethod
    def from_config(cls, cfg, common: dict) -> "UniformSampler":
        return cls(cfg.num_negatives, **common)

    def sample(self, q, batch: Batch, store) -> Draw:
        b, n = len(q), batch.excl.n
        ids = torch.randint(n, (b, self.k), generator=batch.generator)
        lp = math.log(self.k / n)
        excl = batch.excl

        def cross(rows):  # a row excluded for a query is never among its usable draws
            return torch.full((b, len(rows)), lp).masked_fill(excl.contains(rows.expand(b, -1)), -math.inf)
        return Draw(ids, excl.contains(ids), torch.full((b, self.k), lp), cross(batch.pos_rows), cross=cross)

    def proposal(self, q, batch, store):
        n = batch.excl.n
        logq = torch.full((len(q), n), -math.log(n))
        return logq.masked_fill(batch.excl.dense(None), -math.inf)
