"""NGAME's triplet loss against a per-query reference: hardest negatives, margins, extra positives."""

import pytest
import torch

from negminer.errors import ConfigError
from negminer.losses import LOSSES, TripletLoss, build_loss
from losskit import make_inputs


def reference(q, pos, margin, hardest, pool=None, pool_mask=None, neg=None, neg_mask=None, pool_pos=None, **_):
    """Per query: raw dot products, the `hardest` best-scoring negatives by sorting, every pair's hinge."""
    per_query = []
    for i in range(len(q)):
        P, N = [q[i] @ pos[i]], []
        if pool is not None:
            for j in range(len(pool)):
                if pool_pos is not None and pool_pos[i, j]:
                    P.append(q[i] @ pool[j])
                elif pool_mask is None or not pool_mask[i, j]:
                    N.append(q[i] @ pool[j])
        if neg is not None:
            for j in range(neg.shape[1]):
                if neg_mask is None or not neg_mask[i, j]:
                    N.append(q[i] @ neg[i, j])
        if not N:
            continue
        hard = sorted(N, key=lambda s: float(s.detach()), reverse=True)[:hardest]
        per_query.append(sum(torch.relu(n - p + margin) for p in P for n in hard) / (len(P) * len(hard)))
    return sum(per_query) / len(per_query)


def grads(fn, inp):
    names = [n for n in ("q", "pos", "pool", "neg") if inp.get(n) is not None]
    leaves = [inp[n].detach().clone().requires_grad_() for n in names]
    loss = fn({**inp, **dict(zip(names, leaves))})
    return loss.detach(), torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("hardest", [1, 3, 50])
@pytest.mark.parametrize("drop", [(), ("pool", "pool_mask", "pool_log_pi", "pool_pos"),
                                  ("neg", "neg_mask", "neg_log_pi"), ("pool_pos",),
                                  ("pool_mask", "neg_mask", "pool_pos")])
def test_matches_per_query_reference_and_its_gradients(drop, hardest):
    inp = {n: v for n, v in make_inputs(0).items() if n not in drop}
    loss = TripletLoss(margin=0.5, hardest=hardest)
    got, g_got = grads(lambda kw: loss(scale=20.0, **kw), inp)
    want, g_want = grads(lambda kw: reference(margin=0.5, hardest=hardest, **kw), inp)
    assert abs(float(got) - float(want)) < 1e-12
    for a, b in zip(g_got, g_want):
        assert torch.allclose(a, b, atol=1e-12)


def test_scale_and_log_pi_are_not_used():
    inp = make_inputs(1)
    base = TripletLoss()(scale=1.0, **inp)
    assert torch.equal(TripletLoss()(scale=20.0, **inp), base)
    assert torch.equal(TripletLoss()(scale=1.0, **{**inp, "pool_log_pi": None, "neg_log_pi": None}), base)
    f32 = {n: (v.float() if v.is_floating_point() else v) for n, v in inp.items()}
    bf = {n: (v.bfloat16() if v.is_floating_point() else v) for n, v in inp.items()}
    assert TripletLoss()(scale=1.0, **f32).dtype == torch.float32
    assert abs(float(TripletLoss()(scale=1.0, **bf)) - float(base)) < 0.05


def test_zero_when_every_negative_is_a_margin_below_every_positive():
    g = torch.Generator().manual_seed(2)
    b, d = 4, 6
    q = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=-1).requires_grad_()
    pos = q.detach() * 1.0                    # cosine 1 with its query
    neg = (q.detach()[:, None] * 0.6).expand(b, 3, d).clone().requires_grad_()   # 0.6: 0.4 below, margin 0.3
    loss = TripletLoss(margin=0.3)(q, pos, 1.0, neg=neg)
    loss.backward()
    assert float(loss.detach()) == 0.0 and (q.grad == 0).all() and (neg.grad == 0).all()
    assert float(TripletLoss(margin=0.45)(q, pos, 1.0, neg=neg).detach()) > 0


def test_hardest_are_the_top_scores():
    # one query, unit vectors along axes: scores are exactly the coefficients below
    q = torch.tensor([[1.0, 0.0]])
    pos = torch.tensor([[0.5, 0.0]])
    coef = torch.tensor([0.45, 0.1, 0.4, -0.2, 0.3, 0.2])    # hardest 3: 0.45, 0.4, 0.3
    pool = torch.stack([coef, torch.zeros(6)], 1)[:3].clone().requires_grad_()
    neg = torch.stack([coef, torch.zeros(6)], 1)[3:][None].clone().requires_grad_()
    loss = TripletLoss(margin=0.3, hardest=3)(q, pos, 1.0, pool=pool, neg=neg)
    want = ((0.45 - 0.5 + 0.3) + (0.4 - 0.5 + 0.3) + (0.3 - 0.5 + 0.3)) / 3
    assert abs(float(loss.detach()) - want) < 1e-6
    loss.backward()
    assert (pool.grad[[0, 2], 0] != 0).all() and (neg.grad[0, 1, 0] != 0)
    assert (pool.grad[1] == 0).all() and (neg.grad[0, [0, 2]] == 0).all()   # not among the hardest
    # masking the hardest lets the next one in
    mask = torch.tensor([[True, False, False]])
    loss = TripletLoss(margin=0.3, hardest=3)(q, pos, 1.0, pool=pool, pool_mask=mask, neg=neg)
    want = ((0.4 - 0.5 + 0.3) + (0.3 - 0.5 + 0.3) + (0.2 - 0.5 + 0.3)) / 3
    assert abs(float(loss.detach()) - want) < 1e-6


def test_extra_positives_each_face_the_hardest():
    q = torch.tensor([[1.0, 0.0]])
    pos = torch.tensor([[0.5, 0.0]])
    pool = torch.tensor([[0.9, 0.0], [0.45, 0.0], [0.3, 0.0]])   # column 0 another positive of the query
    pool_pos = torch.tensor([[True, False, False]])
    loss = TripletLoss(margin=0.3, hardest=1)(q, pos, 1.0, pool=pool, pool_mask=pool_pos, pool_pos=pool_pos)
    want = (max(0.45 - 0.5 + 0.3, 0) + max(0.45 - 0.9 + 0.3, 0)) / 2   # the 0.9 positive clears the margin
    assert abs(float(loss) - want) < 1e-6
    # without pool_pos the column is a (masked) negative-to-be-ignored: only the own positive counts
    loss = TripletLoss(margin=0.3, hardest=1)(q, pos, 1.0, pool=pool, pool_mask=pool_pos)
    assert abs(float(loss) - (0.45 - 0.5 + 0.3)) < 1e-6


def test_no_negatives_gives_zero_attached_to_the_graph():
    q, pos = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    for kw in ({}, {"pool": pos, "pool_mask": torch.ones(3, 3, dtype=torch.bool)},
               {"neg": torch.randn(3, 2, 4), "neg_mask": torch.ones(3, 2, dtype=torch.bool)}):
        loss = TripletLoss()(q, pos, 1.0, **kw)
        assert loss.requires_grad and float(loss.detach()) == 0.0
        loss.backward()
        assert (q.grad == 0).all() and torch.isfinite(pos.grad).all()
        q.grad = pos.grad = None


def test_queries_without_negatives_are_left_out_of_the_mean():
    inp = make_inputs(3)  # query 1 has no negative
    got = TripletLoss(hardest=2)(scale=1.0, **inp)
    keep = [0, 2, 3, 4]
    sub = {n: (v[keep] if n not in ("pool",) and v is not None else v) for n, v in inp.items()}
    assert torch.allclose(got, TripletLoss(hardest=2)(scale=1.0, **sub), atol=1e-12)


def test_registered_with_options():
    assert LOSSES["triplet"] is TripletLoss
    loss = build_loss("triplet")
    assert (loss.margin, loss.hardest) == (0.3, 5) and loss.needs == {"pool", "neg", "pool_pos"}
    loss = build_loss("triplet", triplet_margin=0.1, triplet_hardest=2, topk_k=3)
    assert (loss.margin, loss.hardest) == (0.1, 2)
    with pytest.raises(ConfigError, match="hardest"):
        build_loss("triplet", triplet_hardest=0)
