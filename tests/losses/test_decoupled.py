"""DEXML's decoupled softmax against a per-query reference: terms, weights, masks, gradients."""

import pytest
import torch

from negminer.losses import LOSSES, DecoupledSoftmaxLoss, SoftmaxLoss, build_loss
from losskit import make_inputs, poison_masked

def candidates(i, q, pos, scale, pool=None, pool_mask=None, pool_log_pi=None, neg=None, neg_mask=None,
               neg_log_pi=None, pool_pos=None):
    """Query i's positives [score] and negatives [(score, log pi)], one candidate at a time."""
    P, N = [q[i] @ pos[i] * scale], []
    if pool is not None:
        for j in range(len(pool)):
            s = q[i] @ pool[j] * scale
            if pool_pos is not None and pool_pos[i, j]:
                P.append(s)
            elif pool_mask is None or not pool_mask[i, j]:
                N.append((s, 0.0 if pool_log_pi is None else pool_log_pi[i, j]))
    if neg is not None:
        for j in range(neg.shape[1]):
            if neg_mask is None or not neg_mask[i, j]:
                N.append((q[i] @ neg[i, j] * scale, 0.0 if neg_log_pi is None else neg_log_pi[i, j]))
    return P, N


def reference(q, pos, scale, **kw):
    total = 0.0
    for i in range(len(q)):
        P, N = candidates(i, q, pos, scale, **kw)
        negs = [s - lp for s, lp in N]
        total = total - sum(sl - torch.logsumexp(torch.stack([sl] + negs), 0) for sl in P) / len(P)
    return total / len(q)


def grads(fn, inp):
    names = [n for n in ("q", "pos", "pool", "neg") if inp.get(n) is not None]
    leaves = [inp[n].detach().clone().requires_grad_() for n in names]
    loss = fn({**inp, **dict(zip(names, leaves))})
    return loss.detach(), torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("drop", [(), ("pool_log_pi", "neg_log_pi"), ("pool", "pool_mask", "pool_log_pi", "pool_pos"),
                                  ("neg", "neg_mask", "neg_log_pi"), ("pool_pos",),
                                  ("pool_mask", "neg_mask", "pool_pos")])
def test_matches_per_query_reference_and_its_gradients(drop):
    inp = {n: v for n, v in make_inputs(0).items() if n not in drop}
    loss = DecoupledSoftmaxLoss()
    got, g_got = grads(lambda kw: loss(scale=3.0, **kw), inp)
    want, g_want = grads(lambda kw: reference(scale=3.0, **kw), inp)
    assert got.dtype == torch.float64
    assert abs(float(got) - float(want)) < 1e-10
    for a, b in zip(g_got, g_want):
        assert torch.allclose(a, b, atol=1e-10)


def test_float32_and_bf16_inputs_compute_in_float32():
    inp = make_inputs(1)
    want = float(reference(scale=3.0, **inp))
    f32 = {n: (v.float() if v.is_floating_point() else v) for n, v in inp.items()}
    got = DecoupledSoftmaxLoss()(scale=3.0, **f32)
    assert got.dtype == torch.float32 and abs(float(got) - want) < 1e-5
    bf = {n: (v.bfloat16() if v.is_floating_point() else v) for n, v in inp.items()}
    got = DecoupledSoftmaxLoss()(scale=3.0, **bf)
    assert got.dtype == torch.float32 and abs(float(got) - want) < 0.05


def test_equals_softmax_with_one_positive_per_query():
    inp = make_inputs(2)
    del inp["pool_pos"]
    sm = SoftmaxLoss()(scale=2.0, **inp)
    assert torch.allclose(DecoupledSoftmaxLoss()(scale=2.0, **inp), sm, atol=1e-12)
    none = torch.zeros_like(inp["pool_mask"])
    assert torch.allclose(DecoupledSoftmaxLoss()(scale=2.0, pool_pos=none, **inp), sm, atol=1e-12)
    g = torch.Generator().manual_seed(3)  # plain in-batch: cross-entropy of the similarity matrix
    q, p = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    want = torch.nn.functional.cross_entropy(q @ p.T * 2.0, torch.arange(6))
    assert torch.allclose(DecoupledSoftmaxLoss()(q, p, 2.0, pool=p, pool_mask=torch.eye(6, dtype=torch.bool)), want,
                          atol=1e-6)


def test_two_positives_do_not_compete():
    # query 0: own positive (col 0) and pool column 1 positive; negatives pool column 2 and a drawn one
    g = torch.Generator().manual_seed(4)
    q, pos = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    neg = torch.randn(3, 1, 5, generator=g, dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.bool)
    pool_pos = torch.zeros(3, 3, dtype=torch.bool)
    pool_pos[0, 1] = True
    got = DecoupledSoftmaxLoss()(q[:1], pos[:1], 1.0, pool=pos, pool_mask=(eye | pool_pos)[:1], neg=neg[:1],
                                 pool_pos=pool_pos[:1])
    s_a, s_b, s_n, s_d = q[0] @ pos[0], q[0] @ pos[1], q[0] @ pos[2], q[0] @ neg[0, 0]
    neg_sum = s_n.exp() + s_d.exp()
    want = -0.5 * (torch.log(s_a.exp() / (s_a.exp() + neg_sum)) + torch.log(s_b.exp() / (s_b.exp() + neg_sum)))
    assert torch.allclose(got, want, atol=1e-12)
    coupled = -0.5 * (torch.log(s_a.exp() / (s_a.exp() + s_b.exp() + neg_sum))
                      + torch.log(s_b.exp() / (s_a.exp() + s_b.exp() + neg_sum)))
    assert not torch.allclose(got, coupled)
    # raising the other positive's score lowers the loss (it never enters a denominator), and the
    # pair's loss is the same with the positives' roles swapped
    pos2 = pos.clone()
    pos2[1] = pos[1] + 0.5 * q[0]
    higher = DecoupledSoftmaxLoss()(q[:1], pos2[:1], 1.0, pool=pos2, pool_mask=(eye | pool_pos)[:1], neg=neg[:1],
                                    pool_pos=pool_pos[:1])
    assert higher < got
    swapped = DecoupledSoftmaxLoss()(q[:1], pos[1:2], 1.0, pool=pos[[1, 0, 2]], pool_mask=(eye | pool_pos)[:1],
                                     neg=neg[:1], pool_pos=pool_pos[:1])
    assert torch.allclose(swapped, got, atol=1e-12)


def test_masked_entries_contribute_nothing_and_give_no_nan():
    inp = make_inputs(5, dtype=torch.float32)
    # garbage where masked: an unusable column's correction and embedding must not matter
    poison_masked(inp)
    neg = inp["neg"].clone().requires_grad_()
    q = inp["q"].clone().requires_grad_()
    neg.data[inp["neg_mask"]] *= 1e6
    loss = DecoupledSoftmaxLoss()(scale=20.0, **{**inp, "neg": neg, "q": q})
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(q.grad).all() and torch.isfinite(neg.grad).all()
    assert (neg.grad[inp["neg_mask"]] == 0).all()
    clean = make_inputs(5, dtype=torch.float32)
    assert torch.allclose(loss, DecoupledSoftmaxLoss()(scale=20.0, **clean), atol=1e-5)


def test_query_without_negatives_has_zero_loss_and_gradient():
    q = torch.randn(3, 4, requires_grad=True)
    pos = torch.randn(3, 4)
    loss = DecoupledSoftmaxLoss()(q, pos, 20.0)
    loss.backward()
    assert float(loss.detach()) == 0.0 and (q.grad == 0).all()
    loss = DecoupledSoftmaxLoss()(q, pos, 20.0, pool=pos, pool_mask=torch.ones(3, 3, dtype=torch.bool))
    assert float(loss.detach()) == 0.0


def test_gradcheck():
    inp = make_inputs(6, b=3, m=4, k=3, d=4)
    names = ("q", "pos", "pool", "neg")
    leaves = tuple(inp[n].clone().requires_grad_() for n in names)
    rest = {n: v for n, v in inp.items() if n not in names}
    assert torch.autograd.gradcheck(lambda *x: DecoupledSoftmaxLoss()(scale=2.0, **dict(zip(names, x)), **rest),
                                    leaves)


def test_registered():
    assert LOSSES["decoupled"] is DecoupledSoftmaxLoss
    loss = build_loss("decoupled", topk_k=3, triplet_margin=0.1)  # other losses' options are ignored
    assert isinstance(loss, DecoupledSoftmaxLoss) and loss.needs == {"pool", "neg", "log_pi", "pool_pos"}
    assert loss.replacement is False
