"""Decoupled softmax: InfoNCE for several positives per query, each positive against the negatives only.

Gupta, Khatri, Rawat, Bhojanapalli, Jain, Dhillon, "Dual-Encoders for Extreme Multi-Label
Classification", ICLR 2024 (DEXML).

With P_i the positives of query i (its sampled positive ``pos[i]`` and the pool columns flagged by
``pool_pos[i]``), N_i its negatives (unmasked pool columns and unmasked drawn negatives), scores
s_ij = q_i . x_j * scale and importance weights w_ij = 1 / pi_ij (w = 1 without ``log_pi``),

    loss_i = -(1 / |P_i|) sum_{l in P_i} log( exp(s_il) / (exp(s_il) + sum_{j in N_i} w_ij exp(s_ij)) ),

averaged over the batch. The other positives of the query never appear in a positive's denominator
(that is the decoupling): a multi-label query is not pushed to split its probability mass among its
labels, as a softmax over P_i u N_i would (Gupta et al., Sec. 3). With one positive per query it is
exactly ``SoftmaxLoss``. The weights are the sampled-softmax correction of ``SoftmaxLoss``: the
weighted sum over N_i estimates the sum over all the query's negative labels.

Example::

    loss = DecoupledSoftmaxLoss()(q, pos, 20.0, pool=pos, pool_mask=mask, pool_pos=extra_pos)
    loss = DecoupledSoftmaxLoss()(q, pos, 20.0, neg=neg, neg_mask=m, neg_log_pi=draw.log_pi)

``candidate_scores`` lays out one query's candidates (own positive, pool, drawn negatives) in one
row; the soft top-k and triplet losses use it too.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def compute_dtype(x: Tensor) -> torch.dtype:
    """float32 for half/bf16/float32 inputs; float64 stays float64 (for gradcheck and references)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def candidate_scores(q: Tensor, pos: Tensor, scale: Tensor | float, pool: Tensor | None = None,
                     pool_mask: Tensor | None = None, pool_log_pi: Tensor | None = None, neg: Tensor | None = None,
                     neg_mask: Tensor | None = None, neg_log_pi: Tensor | None = None,
                     pool_pos: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Every candidate of every query in one row: columns [own positive | pool (M) | drawn (k)].

    Returns ``(s, is_pos, is_neg, log_pi)``, all [B, 1 + M + k]: s the scores q . x * scale (finite
    everywhere, masked columns included: callers select with ``is_pos`` / ``is_neg``); is_pos True on
    column 0 and where ``pool_pos``; is_neg True on the usable negatives (pool columns neither masked
    nor flagged positive, drawn negatives not masked); log_pi the log expected counts (0 where no
    correction is given and on the own positive; meaningful only where is_neg), or None when neither
    ``pool_log_pi`` nor ``neg_log_pi`` is given (no [B, 1 + M + k] of zeros with a pool of all targets)."""
    dt = compute_dtype(q)
    q, pos = q.to(dt), pos.to(dt)
    b, dev = len(q), q.device
    s = [(q * pos).sum(-1, keepdim=True)]
    is_pos = [torch.ones(b, 1, dtype=torch.bool, device=dev)]
    is_neg = [torch.zeros(b, 1, dtype=torch.bool, device=dev)]
    corrected = pool_log_pi is not None or neg_log_pi is not None
    log_pi = [torch.zeros(b, 1, dtype=dt, device=dev)]
    if pool is not None:  # [M, d] shared by all queries
        sp = q @ pool.to(dt).T
        m = sp.shape[1]
        no = torch.zeros(b, m, dtype=torch.bool, device=dev)
        extra = no if pool_pos is None else pool_pos.to(device=dev, dtype=torch.bool).expand(b, m)
        blocked = no if pool_mask is None else pool_mask.to(device=dev, dtype=torch.bool).expand(b, m)
        s.append(sp)
        is_pos.append(extra)
        is_neg.append(~blocked & ~extra)
        log_pi.append(torch.zeros(b, m, dtype=dt, device=dev) if pool_log_pi is None
                      else pool_log_pi.to(device=dev, dtype=dt).expand(b, m))
    if neg is not None:  # [B, k, d] per query
        sn = torch.einsum("bd,bkd->bk", q, neg.to(dt))
        k = sn.shape[1]
        s.append(sn)
        is_pos.append(torch.zeros(b, k, dtype=torch.bool, device=dev))
        is_neg.append(torch.ones(b, k, dtype=torch.bool, device=dev) if neg_mask is None
                      else ~neg_mask.to(device=dev, dtype=torch.bool))
        log_pi.append(torch.zeros(b, k, dtype=dt, device=dev) if neg_log_pi is None
                      else neg_log_pi.to(device=dev, dtype=dt))
    return (torch.cat(s, 1) * scale, torch.cat(is_pos, 1), torch.cat(is_neg, 1),
            torch.cat(log_pi, 1) if corrected else None)


class DecoupledSoftmaxLoss(torch.nn.Module):
    """DEXML's decoupled softmax over the query's positives; mean over the batch."""

    needs = frozenset({"pool", "neg", "log_pi", "pool_pos"})
    replacement = False  # the weights 1/pi correct draws with or without replacement alike

    def forward(self, q: Tensor, pos: Tensor, scale: Tensor | float, pool: Tensor | None = None,
                pool_mask: Tensor | None = None, pool_log_pi: Tensor | None = None, neg: Tensor | None = None,
                neg_mask: Tensor | None = None, neg_log_pi: Tensor | None = None,
                pool_pos: Tensor | None = None) -> Tensor:
        s, is_pos, is_neg, log_pi = candidate_scores(q, pos, scale, pool, pool_mask, pool_log_pi, neg, neg_mask,
                                                     neg_log_pi, pool_pos)
        # log sum_{j in N_i} w_ij exp(s_ij); -inf for a query without negatives. masked_fill's backward
        # zeroes the masked entries' gradient, so no NaN from (-inf) - (-inf) reaches the inputs.
        logits = s if log_pi is None else s - log_pi
        neg_lse = torch.logsumexp(logits.masked_fill(~is_neg, -math.inf), 1, keepdim=True)
        log_p = s - torch.logaddexp(s, neg_lse)        # every column as if it were a positive; s is finite
        per_query = torch.where(is_pos, log_p, torch.zeros_like(log_p)).sum(1) / is_pos.sum(1)
        return -per_query.mean()
