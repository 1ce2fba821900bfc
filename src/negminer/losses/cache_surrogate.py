"""The negative-cache surrogate loss of Lindgren et al., "Efficient Training of Retrieval Models
using Negative Cache", NeurIPS 2021.

With s the fresh scores x 1/tau, the exact full-softmax gradient is
    grad L = (1 - p_pos) * ( E_{j ~ softmax over negatives} grad s_j  -  grad s_pos ),
so with negatives j_1..j_k drawn (with replacement) from the cache's softmax,
    L_sur = stopgrad(1 - p_pos) * mean_m (s_{j_m} - s_pos),
    p_pos = exp(s_pos) / (exp(s_pos) + sum_{j in cache} exp(s~_j))      (s~: stale cached scores)
has that gradient in expectation when the cache is fresh. ``log_z`` is log sum_j exp(s~_j) from the
sampler's streaming pass. Masked draws (positives, duplicates) are left out of the mean. It uses
the sampled negatives only (no in-batch pool).

Example::

    loss = CacheSurrogateLoss()(q, pos, scale, neg=fresh_negs, neg_mask=mask, log_z=draw.log_z)
"""

from __future__ import annotations

import torch
from torch import Tensor


class CacheSurrogateLoss(torch.nn.Module):
    needs = frozenset({"neg", "log_z"})
    replacement = True  # the mean over draws estimates an expectation under the proposal

    def forward(self, q: Tensor, pos: Tensor, scale, neg: Tensor | None = None, neg_mask: Tensor | None = None,
                log_z: Tensor | None = None) -> Tensor:
        if neg is None:  # nothing to draw from yet (a stream's first step): no gradient signal
            return (q.sum() + pos.sum()) * 0.0
        q, pos, neg = q.float(), pos.float(), neg.float()
        s_pos = (q * pos).sum(-1) * scale                        # [B]
        s_neg = torch.einsum("bd,bkd->bk", q, neg) * scale       # [B, k]
        with torch.no_grad():
            p_pos = torch.sigmoid(s_pos - log_z)                 # exp(s_pos) / (exp(s_pos) + Z)
        keep = (~neg_mask).float()
        mean_neg = (s_neg * keep).sum(1) / keep.sum(1).clamp(min=1)
        has = (keep.sum(1) > 0).float()
        return ((1 - p_pos) * (mean_neg - s_pos) * has).mean()
