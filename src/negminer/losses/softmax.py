"""Softmax cross-entropy over [positive, negatives] (InfoNCE).

van den Oord et al., "Representation Learning with Contrastive Predictive Coding", 2018;
in-batch form as in Henderson et al. 2017 / Karpukhin et al. (DPR), EMNLP 2020.

    loss_i = -log  exp(s(q_i, p_i) / tau) / ( exp(s(q_i, p_i) / tau) + sum_j exp((s(q_i, n_ij) / tau) - c_ij) )

where s is the dot product, the n_ij are the negatives (a pool shared by the batch, e.g. the other
queries' positives, and/or negatives drawn per query), and c_ij = log(k * Q(n_ij)) is the
sampled-softmax correction when a sampler gives the proposal's log-probabilities (0 otherwise).
Masked negatives (false negatives: other positives of the query, duplicates) are left out.

Example::

    loss = SoftmaxLoss()(q, pos, scale=20.0, pool=pos, pool_mask=mask)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


class SoftmaxLoss(torch.nn.Module):
    """InfoNCE over a shared pool and/or per-query negatives; mean over the batch."""

    def forward(
        self,
        q: Tensor,
        pos: Tensor,
        scale: Tensor | float,
        pool: Tensor | None = None,
        pool_mask: Tensor | None = None,
        neg: Tensor | None = None,
        neg_mask: Tensor | None = None,
        log_q: Tensor | None = None,
    ) -> Tensor:
        q, pos = q.float(), pos.float()
        parts = [(q * pos).sum(-1, keepdim=True) * scale]  # [B, 1]
        if pool is not None:  # [M, d] shared by all queries
            s = q @ pool.float().T * scale
            if pool_mask is not None:
                s = s.masked_fill(pool_mask, -math.inf)
            parts.append(s)
        if neg is not None:  # [B, k, d] per query
            s = torch.einsum("bd,bkd->bk", q, neg.float()) * scale
            if log_q is not None:
                s = s - (log_q + math.log(neg.shape[1]))
            if neg_mask is not None:
                s = s.masked_fill(neg_mask, -math.inf)
            parts.append(s)
        logits = torch.cat(parts, dim=1)
        return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
