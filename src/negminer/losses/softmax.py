"""Softmax cross-entropy over [positive, negatives] (InfoNCE), with sampled-softmax corrections.

van den Oord et al., "Representation Learning with Contrastive Predictive Coding", 2018;
in-batch form as in Henderson et al. 2017 / Karpukhin et al. (DPR), EMNLP 2020; sampled softmax
(Bengio & Senecal 2008; Jean et al. 2015) with inclusion probabilities for draws without
replacement (Kool et al., ICLR 2020) and the mixture of in-batch and sampled negatives (Yang et
al., "Mixed Negative Sampling", WWW 2020).

    loss_i = -log  exp(s_ip / tau) / ( exp(s_ip / tau) + sum_j exp(s_ij / tau - log pi_ij) )

where the n_ij are the negatives (a pool shared by the batch, e.g. the other queries' positives,
and/or negatives drawn per query) and pi_ij is the expected number of times n_ij is in query i's
sample (its inclusion probability; k q for draws with replacement; for in-batch and drawn
negatives together, the sum of both sources' expected counts), so that the denominator estimates
the full partition function once. With pi omitted (plain in-batch, ANCE, exact top-k), no
correction. Masked negatives (other positives of the query, duplicates) are left out.

Example::

    loss = SoftmaxLoss()(q, pos, scale=20.0, pool=pos, pool_mask=mask)                 # in-batch
    loss = SoftmaxLoss()(q, pos, 20.0, neg=neg, neg_mask=m, neg_log_pi=draw.log_pi)     # sampled
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


class SoftmaxLoss(torch.nn.Module):
    """InfoNCE over a shared pool and/or per-query negatives; mean over the batch."""

    needs = frozenset({"pool", "neg", "log_pi"})
    replacement = False  # works with draws with or without replacement

    def forward(self, q: Tensor, pos: Tensor, scale: Tensor | float, pool: Tensor | None = None,
                pool_mask: Tensor | None = None, pool_log_pi: Tensor | None = None, neg: Tensor | None = None,
                neg_mask: Tensor | None = None, neg_log_pi: Tensor | None = None) -> Tensor:
        q, pos = q.float(), pos.float()
        parts = [(q * pos).sum(-1, keepdim=True) * scale]  # [B, 1]
        if pool is not None:  # [M, d] shared by all queries
            s = q @ pool.float().T * scale
            if pool_log_pi is not None:
                s = s - pool_log_pi
            if pool_mask is not None:
                s = s.masked_fill(pool_mask, -math.inf)
            parts.append(s)
        if neg is not None:  # [B, k, d] per query
            s = torch.einsum("bd,bkd->bk", q, neg.float()) * scale
            if neg_log_pi is not None:
                s = s - neg_log_pi
            if neg_mask is not None:
                s = s.masked_fill(neg_mask, -math.inf)
            parts.append(s)
        logits = torch.cat(parts, dim=1)
        return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
