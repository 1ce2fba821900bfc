"""Soft top-k loss: maximise each positive's probability of being among the query's top k.

Gupta, Khatri, Rawat, Bhojanapalli, Jain, Dhillon, "Dual-Encoders for Extreme Multi-Label
Classification", ICLR 2024 (DEXML, the SoftTop-k loss), with the sigmoid-threshold soft top-k
operator (a smoothed top-k mask whose threshold is found by bisection and differentiated implicitly).

For query i with candidates C_i = P_i u N_i (positives: the sampled positive and the ``pool_pos``
columns, weight 1; negatives: unmasked pool columns and drawn negatives, weight w_ij = 1 / pi_ij, or
1 without ``log_pi``) and scores s_ij = q_i . x_j * scale,

    p_ij = sigmoid(alpha * (s_ij + t_i)),   t_i such that  sum_{j in C_i} w_ij p_ij = k_i,
    loss_i = -(1 / |P_i|) sum_{l in P_i} log p_il,                  mean over the batch.

p_ij is a soft indicator of "j is in the query's top k": as alpha -> inf it tends to the hard top-k
mask (t_i falls between the k-th and (k+1)-th scores). With importance weights the candidates stand
for the whole label set, sum_j w_ij p_ij estimating the expected number of labels above the threshold.

Cap on k: the equation has a (finite) solution only for 0 < k_i < W_i = sum_{j in C_i} w_ij, so

    k_i = min(k, max(W_i - 1/2, W_i / 2)):

when the candidates carry less than k + 1/2 items' worth of weight, ask for all but half an item of
them (the loss always has the query's own positive, so W_i >= 1 and the W_i / 2 branch only serves
the operator used alone with small weights). A query whose only candidate is its positive then
gets p = 1/2, a constant loss log 2 and no gradient: nothing to rank it against.

Threshold: bisection (no grad), on scores centred on the middle of each row's range (float32
keeps its precision with large scores), between t = -max s - m / alpha and -min s + m / alpha with
m = log(W_i / min(k_i, W_i - k_i)) + 2, which bracket the root, until the bracket is at the
floating-point precision of the scores' dtype (or ``iters`` halvings). Backward by the implicit
function theorem: with v_j = sigmoid'(alpha (s_j + t)) and S = sum_m w_m v_m,

    dt/ds_j = -w_j v_j / S,      dt/d(log w_j) = w_j (dk/dW - p_j) / (alpha S),

so a score's gradient also moves every other candidate's p through the threshold.

Example::

    loss = SoftTopKLoss(k=5, alpha=1.0)(q, pos, 20.0, pool=pos, pool_mask=mask, pool_pos=extra_pos)
    log_p = soft_topk(scores, k=5, alpha=1.0, weight=w, mask=unusable)     # the operator alone
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from negminer.losses.decoupled import candidate_scores


def _cap(k: Tensor, w_total: Tensor) -> tuple[Tensor, Tensor]:
    """k_i = min(k, max(W - 1/2, W / 2)) and dk_i/dW_i."""
    room = torch.maximum(w_total - 0.5, w_total / 2)
    capped = k > room
    dk = torch.where(capped, torch.where(w_total - 0.5 >= w_total / 2, 1.0, 0.5), 0.0).to(k.dtype)
    return torch.where(capped, room, k), dk


def _row_range(x: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """Max and min of each row over its candidates; 0 and 0 for a row without any."""
    has = keep.any(1)
    x_max = torch.where(keep, x, -math.inf).amax(1)
    x_min = torch.where(keep, x, math.inf).amin(1)
    return torch.where(has, x_max, 0.0), torch.where(has, x_min, 0.0)


@torch.no_grad()
def _threshold(x: Tensor, lw: Tensor, keep: Tensor, k: Tensor, log_w_total: Tensor, iters: int | None) -> Tensor:
    """tau [B] with sum_j exp(lw_j) sigmoid(x_j + tau) = k (x = alpha * scores), by bisection."""
    x_max, x_min = _row_range(x, keep)
    w_total = log_w_total.exp()
    # m past the extreme scores every sigmoid is within e^-m of 0 (or 1), so the weighted sum is below
    # (above) k there: W e^-m = min(k, W - k) e^-2
    m = log_w_total - torch.log(torch.minimum(k, w_total - k)) + 2.0
    lo, hi = -x_max - m, -x_min + m
    if iters is None:  # halvings until the bracket is below machine epsilon (further ones change nothing)
        width = float((hi - lo).max()) if len(x) else 1.0
        iters = 256 if not math.isfinite(width) else \
            min(256, max(1, math.ceil(math.log2(max(width, 1.0) / torch.finfo(x.dtype).eps)) + 2))
    w, k = (lw - log_w_total[:, None]).exp(), k / w_total   # divided by W: no overflow from large weights
    for _ in range(iters):
        mid = (lo + hi) * 0.5
        below = (torch.sigmoid(x + mid[:, None]) * w).sum(1) < k
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) * 0.5


class _SoftTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, lw, keep, k, alpha, iters):
        with torch.no_grad():
            empty = ~keep.any(1)
            s = torch.where(keep, scores, torch.zeros_like(scores))
            lw = torch.where(keep, lw, torch.full_like(lw, -math.inf))
            log_w_total = torch.logsumexp(lw, 1)
            # a row without candidates has no threshold: any finite stand-in, its outputs are all masked
            log_w_total = torch.where(empty, torch.zeros_like(log_w_total), log_w_total)
            kk, dk = _cap(k, log_w_total.exp())
            kk = torch.where(empty, torch.full_like(kk, 0.5), kk)
            # scores relative to the middle of the row's range: the threshold is then found (and s + t
            # formed) near 0, where the floating-point grid is finest, however large the scores are
            s_max, s_min = _row_range(s, keep)
            x = alpha * (s - ((s_max + s_min) / 2)[:, None])
            z = x + _threshold(x, lw, keep, kk, log_w_total, iters)[:, None]      # alpha (s + t)
            out = F.logsigmoid(z).masked_fill(~keep, -math.inf)
        ctx.save_for_backward(z, lw, keep, dk)
        ctx.alpha = alpha
        return out

    @staticmethod
    def backward(ctx, g):
        z, lw, keep, dk = ctx.saved_tensors
        alpha = ctx.alpha
        log_p, log_1mp = F.logsigmoid(z), F.logsigmoid(-z)
        wv = (lw + log_p + log_1mp).exp()                                  # w_j sigmoid'(z_j); 0 if masked
        S = wv.sum(1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)
        # y_j = log p_j:  dy_j/ds_i = alpha (1 - p_j) (delta_ij + dt/ds_i)
        u = torch.where(keep, g * log_1mp.exp() * alpha, torch.zeros_like(z))
        U = u.sum(1, keepdim=True)
        grad_s = u - U * wv / S
        grad_lw = None
        if ctx.needs_input_grad[1]:
            w = lw.exp()
            grad_lw = U * w * (dk[:, None] - log_p.exp()) / (alpha * S)
        return grad_s, grad_lw, None, None, None, None


def soft_topk(scores: Tensor, k: float | Tensor, alpha: float = 1.0, weight: Tensor | None = None,
              mask: Tensor | None = None, log_weight: Tensor | None = None, iters: int | None = None) -> Tensor:
    """log p [B, n] of the weighted soft top-k: p_j = sigmoid(alpha (s_j + t)), sum_j w_j p_j = k_i.

    ``k``: a number or a [B] tensor, capped per row at max(W - 1/2, W / 2) (W the row's total weight);
    ``weight`` (or ``log_weight``) [B, n] >= 0, default 1; ``mask`` [B, n] True = not a candidate (also
    where the weight is 0): its output is -inf (probability 0) and it gets no gradient, nor does it
    affect the threshold. Differentiable in the scores and the weights (implicitly through t)."""
    if not alpha > 0:
        raise ValueError(f"soft top-k needs alpha > 0, got {alpha}")
    if weight is not None and log_weight is not None:
        raise ValueError("soft top-k takes weight or log_weight, not both")
    keep = torch.ones_like(scores, dtype=torch.bool) if mask is None else ~mask.to(torch.bool)
    if weight is not None:
        keep = keep & (weight > 0)
        log_weight = torch.log(torch.where(keep, weight, torch.ones_like(weight)))
    if log_weight is None:
        log_weight = torch.zeros_like(scores)
    log_weight = log_weight.to(scores.dtype)
    k = torch.as_tensor(k, dtype=scores.dtype, device=scores.device).expand(len(scores))
    if not bool((k > 0).all()):
        raise ValueError("soft top-k needs k > 0")
    return _SoftTopK.apply(scores, log_weight, keep, k, float(alpha), iters)


class SoftTopKLoss(torch.nn.Module):
    """DEXML's soft top-k loss: -mean log p over each query's positives; mean over the batch."""

    needs = frozenset({"pool", "neg", "log_pi", "pool_pos"})
    replacement = False  # the weights 1/pi correct draws with or without replacement alike

    def __init__(self, k: float = 5, alpha: float = 1.0, iters: int | None = None):
        super().__init__()
        if not k > 0:
            raise ValueError(f"topk k must be > 0, got {k}")
        if not alpha > 0:
            raise ValueError(f"topk alpha must be > 0, got {alpha}")
        if iters is not None and iters < 1:
            raise ValueError(f"topk iters must be >= 1, got {iters}")
        self.k, self.alpha, self.iters = k, alpha, iters

    def extra_repr(self) -> str:
        return f"k={self.k}, alpha={self.alpha}, iters={self.iters}"

    def forward(self, q: Tensor, pos: Tensor, scale: Tensor | float, pool: Tensor | None = None,
                pool_mask: Tensor | None = None, pool_log_pi: Tensor | None = None, neg: Tensor | None = None,
                neg_mask: Tensor | None = None, neg_log_pi: Tensor | None = None,
                pool_pos: Tensor | None = None) -> Tensor:
        s, is_pos, is_neg, log_pi = candidate_scores(q, pos, scale, pool, pool_mask, pool_log_pi, neg, neg_mask,
                                                     neg_log_pi, pool_pos)
        keep = is_pos | is_neg
        log_w = None if log_pi is None else torch.where(is_neg, -log_pi, torch.zeros_like(log_pi))  # positives: 1
        log_p = soft_topk(s, self.k, self.alpha, mask=~keep, log_weight=log_w, iters=self.iters)
        per_query = torch.where(is_pos, log_p, torch.zeros_like(log_p)).sum(1) / is_pos.sum(1)
        return -per_query.mean()
