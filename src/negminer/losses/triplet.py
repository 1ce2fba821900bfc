"""Triplet (margin ranking) loss over each query's hardest negatives, as in NGAME.

Dahiya, Gupta, Saini, Soni, Wang, Dave, Jiao, K, Dey, Singh, Hada, Jain, Paliwal, Mittal, Mehta,
Ramjee, Agarwal, Kar, Varma, "NGAME: Negative Mining-aware Mini-batching for Extreme
Classification", WSDM 2023.

With P_i the positives of query i (its sampled positive and the ``pool_pos`` columns), H_i its
``hardest`` highest-scoring usable negatives (unmasked pool columns and unmasked drawn negatives
together; fewer if it has fewer) and raw scores s_ij = q_i . x_j,

    loss_i = (1 / (|P_i| |H_i|)) sum_{l in P_i} sum_{n in H_i} max(0, s_in - s_il + margin),

averaged over the queries with at least one negative (0, still attached to the graph, if none has).

The scores are NOT multiplied by ``scale`` (the argument is accepted and ignored): the margin is in
the units of the dot product, so with L2-normalised embeddings the scores are cosines in [-1, 1] and
margin 0.3 means what it does in NGAME. Unnormalised towers make the margin relative to their norms.

``log_pi`` is not used: importance weights 1/pi correct a sampled estimate of a sum over all labels
(the softmax's partition function); this loss is no such estimate, but a hinge on the hardest
negatives found, a max-type statistic whose candidates are meant to be the hard ones (NGAME's
clustered mini-batches and mined negatives), so reweighting them by how likely they were to be drawn
would not make it unbiased for anything.

Example::

    loss = TripletLoss(margin=0.3, hardest=5)(q, pos, 1.0, pool=pos, pool_mask=mask, pool_pos=extra_pos)
"""

from __future__ import annotations

import torch
from torch import Tensor

from negminer.losses.decoupled import candidate_scores


class TripletLoss(torch.nn.Module):
    """NGAME's triplet loss on raw dot products against the ``hardest`` negatives of each query."""

    needs = frozenset({"pool", "neg", "pool_pos"})
    replacement = False  # the hardest negatives are taken as found, draws with or without replacement

    def __init__(self, margin: float = 0.3, hardest: int = 5):
        super().__init__()
        if not margin >= 0:
            raise ValueError(f"triplet margin must be >= 0, got {margin}")
        if int(hardest) != hardest or hardest < 1:
            raise ValueError(f"triplet hardest must be an integer >= 1, got {hardest}")
        self.margin, self.hardest = float(margin), int(hardest)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, hardest={self.hardest}"

    def forward(self, q: Tensor, pos: Tensor, scale: Tensor | float = 1.0, pool: Tensor | None = None,
                pool_mask: Tensor | None = None, pool_log_pi: Tensor | None = None, neg: Tensor | None = None,
                neg_mask: Tensor | None = None, neg_log_pi: Tensor | None = None,
                pool_pos: Tensor | None = None) -> Tensor:
        s, is_pos, is_neg, _ = candidate_scores(q, pos, 1.0, pool, pool_mask, None, neg, neg_mask, None, pool_pos)
        h = min(self.hardest, s.shape[1])
        with torch.no_grad():  # which negatives are the hardest: a selection, not differentiated
            idx = s.masked_fill(~is_neg, -torch.inf).topk(h, dim=1).indices           # [B, h]
            n_pos = is_pos.sum(1)
            p_idx = is_pos.to(s.dtype).topk(int(n_pos.max()), dim=1).indices       # [B, P]: positives first
        hard, valid = s.gather(1, idx), is_neg.gather(1, idx)     # finite raw scores; False past the negatives
        pos_s, pos_valid = s.gather(1, p_idx), is_pos.gather(1, p_idx)
        n_hard = valid.sum(1)
        # [B, P, h]: every (positive l, hard negative n) pair of the query
        hinge = torch.relu(hard[:, None, :] - pos_s[:, :, None] + self.margin)
        pair = pos_valid[:, :, None] & valid[:, None, :]
        total = torch.where(pair, hinge, torch.zeros_like(hinge)).sum((1, 2))
        has = n_hard > 0
        per_query = total / (n_pos * n_hard).clamp(min=1)
        if not bool(has.any()):
            return s.sum() * 0.0
        return per_query[has].mean()
