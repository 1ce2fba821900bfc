"""DEXML's soft top-k: the operator against a root finder, gradcheck of the implicit backward, the loss."""

import math

import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import brentq
from scipy.special import expit

from negminer.errors import ConfigError
from negminer.losses import LOSSES, SoftTopKLoss, build_loss, soft_topk
from losskit import make_inputs, poison_masked


def candidates(i, q, pos, scale, pool=None, pool_mask=None, pool_log_pi=None, neg=None, neg_mask=None,
               neg_log_pi=None, pool_pos=None):
    """Query i's candidates [(score, log weight, is positive)], one at a time."""
    C = [(q[i] @ pos[i] * scale, 0.0, True)]
    if pool is not None:
        for j in range(len(pool)):
            s = q[i] @ pool[j] * scale
            if pool_pos is not None and pool_pos[i, j]:
                C.append((s, 0.0, True))
            elif pool_mask is None or not pool_mask[i, j]:
                C.append((s, 0.0 if pool_log_pi is None else -float(pool_log_pi[i, j]), False))
    if neg is not None:
        for j in range(neg.shape[1]):
            if neg_mask is None or not neg_mask[i, j]:
                C.append((q[i] @ neg[i, j] * scale, 0.0 if neg_log_pi is None else -float(neg_log_pi[i, j]), False))
    return C


def root(f):
    """A sign change of the increasing f, then Brent's method to float64 precision."""
    lo, hi, step = -1.0, 1.0, 1.0
    while f(lo) > 0:
        lo, step = lo - step, step * 2
    while f(hi) < 0:
        hi, step = hi + step, step * 2
    return brentq(f, lo, hi, xtol=1e-15, rtol=4 * 2.0 ** -52, maxiter=500)


def ref_threshold(s, w, k, alpha):
    """t with sum_j w_j sigmoid(alpha (s_j + t)) = min(k, max(W - 1/2, W / 2)), by a scalar root finder."""
    kk = min(k, max(sum(w) - 0.5, sum(w) / 2))
    return root(lambda t: sum(wj * expit(alpha * (sj + t)) for sj, wj in zip(s, w)) - kk), kk


def reference(q, pos, scale, k=5, alpha=1.0, **kw):
    """Per query: the threshold from ``root`` and then one Newton step taken under autograd. At the root
    the step does not move t, and its gradient is exactly the implicit -df/ds / (df/dt)."""
    total = 0.0
    for i in range(len(q)):
        C = candidates(i, q, pos, scale, **kw)
        s = torch.stack([c[0] for c in C])
        w = torch.tensor([math.exp(c[1]) for c in C], dtype=s.dtype)
        t0, kk = ref_threshold(s.tolist(), w.tolist(), k, alpha)
        z = alpha * (s + t0)
        f = (w * torch.sigmoid(z)).sum() - kk
        fp = (w * alpha * torch.sigmoid(z) * torch.sigmoid(-z)).sum().detach()
        t = t0 - f / fp
        log_p = F.logsigmoid(alpha * (s + t))
        is_pos = torch.tensor([c[2] for c in C])
        total = total - log_p[is_pos].mean()
    return total / len(q)


def grads(fn, inp):
    names = [n for n in ("q", "pos", "pool", "neg") if inp.get(n) is not None]
    leaves = [inp[n].detach().clone().requires_grad_() for n in names]
    loss = fn({**inp, **dict(zip(names, leaves))})
    return loss.detach(), torch.autograd.grad(loss, leaves)


def random_operator_inputs(seed, b=6, n=9, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, n, generator=g, dtype=dtype) * 3
    w = torch.rand(b, n, generator=g, dtype=dtype) * 2 + 0.1
    mask = torch.rand(b, n, generator=g) < 0.3
    mask[0, 2:] = True   # row 0: two candidates, k capped at W - 1/2
    mask[1] = False
    w[-1] *= 0.1         # last row: total weight below 1, k capped at W / 2
    return s, w, mask


@pytest.mark.parametrize("alpha", [0.3, 1.0, 4.0])
def test_operator_matches_a_root_finder(alpha):
    s, w, mask = random_operator_inputs(0)
    k = torch.tensor([3.0, 2.0, 1.5, 3.0, 4.0, 1.0], dtype=torch.float64)
    log_p = soft_topk(s, k, alpha, weight=w, mask=mask)
    assert torch.isinf(log_p[mask]).all() and (log_p[mask] < 0).all()
    for i in range(len(s)):
        keep = ~mask[i]
        t, kk = ref_threshold(s[i, keep].tolist(), w[i, keep].tolist(), float(k[i]), alpha)
        want = F.logsigmoid(alpha * (s[i, keep] + t))
        assert torch.allclose(log_p[i, keep], want, atol=1e-12, rtol=0)
        assert abs(float((w[i, keep] * log_p[i, keep].exp()).sum()) - kk) < 1e-12
    # unweighted and unmasked, float32: the same root to float32 precision
    log_p = soft_topk(s.float(), 2, alpha)
    for i in range(len(s)):
        t, _ = ref_threshold(s[i].tolist(), [1.0] * s.shape[1], 2, alpha)
        assert torch.allclose(log_p[i].double(), F.logsigmoid(alpha * (s[i] + t)), atol=1e-6)


def test_operator_gradcheck_with_weights_and_masks():
    s, w, mask = random_operator_inputs(1, b=4, n=7)
    s, w = s.requires_grad_(), w.requires_grad_()
    k = torch.tensor([2.0, 3.0, 1.0, 2.5], dtype=torch.float64)  # row 0 capped (two candidates)
    fn = lambda s, w: soft_topk(s, k, 1.3, weight=w, mask=mask).masked_fill(mask, 0.0)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (s, w))
    assert torch.autograd.gradcheck(lambda s: soft_topk(s, 3, 0.7), (s,))
    s.grad = None
    soft_topk(s, k, 1.3, weight=w, mask=mask)[~mask].sum().backward()
    assert (s.grad[mask] == 0).all() and (w.grad[mask] == 0).all()


def test_hard_top_k_limit():
    g = torch.Generator().manual_seed(2)
    n, k = 12, 4
    s = torch.stack([torch.randperm(n, generator=g) for _ in range(5)]).double() * 0.5  # gaps >= 0.5
    top = s.topk(k, dim=1).indices
    errs = []
    for alpha in (1.0, 4.0, 16.0, 64.0):
        p = soft_topk(s, k, alpha).exp()
        in_top = p.gather(1, top).sum(1)
        errs.append(float((k - in_top).abs().max()))
        assert torch.allclose(p.sum(1), torch.full((5,), float(k), dtype=torch.float64), atol=1e-12)
    assert errs == sorted(errs, reverse=True) and errs[0] > 0.5 and errs[-1] < 1e-5
    p = soft_topk(s, k, 64.0).exp()  # the top k near 1, the rest near 0
    mask = torch.zeros_like(p, dtype=torch.bool).scatter(1, top, True)
    assert (p[mask] > 1 - 1e-5).all() and (p[~mask] < 1e-5).all()


@pytest.mark.parametrize("drop", [(), ("pool_log_pi", "neg_log_pi"), ("pool", "pool_mask", "pool_log_pi", "pool_pos"),
                                  ("neg", "neg_mask", "neg_log_pi"), ("pool_pos",),
                                  ("pool_mask", "neg_mask", "pool_pos")])
def test_loss_matches_per_query_reference_and_its_gradients(drop):
    inp = {n: v for n, v in make_inputs(0).items() if n not in drop}
    loss = SoftTopKLoss(k=3, alpha=1.5)
    got, g_got = grads(lambda kw: loss(scale=2.0, **kw), inp)
    want, g_want = grads(lambda kw: reference(scale=2.0, k=3, alpha=1.5, **kw), inp)
    assert abs(float(got) - float(want)) < 1e-10
    for a, b in zip(g_got, g_want):
        assert torch.allclose(a, b, atol=1e-9)
    f32 = {n: (v.float() if v.is_floating_point() else v) for n, v in inp.items()}
    got32 = loss(scale=2.0, **f32)
    assert got32.dtype == torch.float32 and abs(float(got32) - float(want)) < 1e-5


def test_loss_gradcheck():
    inp = make_inputs(3, b=3, m=4, k=3, d=4)
    names = ("q", "pos", "pool", "neg")
    leaves = tuple(inp[n].clone().requires_grad_() for n in names)
    rest = {n: v for n, v in inp.items() if n not in names}
    loss = SoftTopKLoss(k=2, alpha=0.8)
    assert torch.autograd.gradcheck(lambda *x: loss(scale=2.0, **dict(zip(names, x)), **rest), leaves)


def test_query_with_only_its_positive_gets_constant_loss():
    q = torch.randn(3, 4, requires_grad=True)
    pos = torch.randn(3, 4)
    loss = SoftTopKLoss()(q, pos, 20.0, pool=pos, pool_mask=torch.ones(3, 3, dtype=torch.bool))
    loss.backward()
    assert abs(float(loss.detach()) - math.log(2)) < 1e-6 and q.grad.abs().max() < 1e-6


def test_stable_at_scale_20_with_scores_near_one():
    g = torch.Generator().manual_seed(4)
    b, k, d = 8, 6, 16
    q = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)
    pos = F.normalize(q + 1e-3 * torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)   # cos ~ 1
    sign = torch.where(torch.rand(b, k, 1, generator=g) < 0.5, 1.0, -1.0).double()
    neg = F.normalize(sign * q[:, None] + 1e-3 * torch.randn(b, k, d, generator=g, dtype=torch.float64), dim=-1)
    neg_log_pi = torch.log(torch.rand(b, k, generator=g, dtype=torch.float64) * 1e-3 + 1e-6)   # weights up to 1e6
    mask = torch.eye(b, dtype=torch.bool)
    for alpha in (1.0, 10.0, 100.0):
        for dtype in (torch.float64, torch.float32, torch.bfloat16):
            qq = q.detach().to(dtype).clone().requires_grad_()
            loss = SoftTopKLoss(k=5, alpha=alpha)(qq, pos.to(dtype), 20.0, pool=pos.to(dtype), pool_mask=mask,
                                                  neg=neg.to(dtype), neg_log_pi=neg_log_pi.to(dtype))
            loss.backward()
            assert torch.isfinite(loss) and torch.isfinite(qq.grad).all(), (alpha, dtype)
            if dtype == torch.float64:
                want = float(reference(q, pos, 20.0, k=5, alpha=alpha, pool=pos, pool_mask=mask, neg=neg,
                                       neg_log_pi=neg_log_pi))
                assert abs(float(loss.detach()) - want) < 1e-8
            elif dtype == torch.float32:
                assert abs(float(loss.detach()) - want) < 1e-4 * max(1.0, abs(want))


def test_masked_entries_give_no_nan():
    inp = make_inputs(5, dtype=torch.float32)
    poison_masked(inp)
    q, neg = inp["q"].clone().requires_grad_(), inp["neg"].clone()
    neg[inp["neg_mask"]] *= 1e6
    neg.requires_grad_()
    loss = SoftTopKLoss()(scale=20.0, **{**inp, "q": q, "neg": neg})
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(q.grad).all() and torch.isfinite(neg.grad).all()
    assert (neg.grad[inp["neg_mask"]] == 0).all()
    assert torch.allclose(loss, SoftTopKLoss()(scale=20.0, **make_inputs(5, dtype=torch.float32)), atol=1e-5)


def test_registered_with_options():
    assert LOSSES["topk"] is SoftTopKLoss
    loss = build_loss("topk")
    assert (loss.k, loss.alpha, loss.iters) == (5, 1.0, None) and loss.needs == {"pool", "neg", "log_pi", "pool_pos"}
    loss = build_loss("topk", topk_k=3, topk_alpha=2.0, topk_iters=80, topk_unknown=1, triplet_margin=0.1)
    assert (loss.k, loss.alpha, loss.iters) == (3, 2.0, 80)
    assert build_loss("topk", topk_k=None).k == 5
    with pytest.raises(ConfigError, match="alpha"):
        build_loss("topk", topk_alpha=0.0)
