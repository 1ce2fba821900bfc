import math

import torch

from negminer.losses import SoftmaxLoss


def brute_force(q, pos, scale, pool, pool_mask, pool_log_pi, neg, neg_mask, log_pi):
    total = 0.0
    B = q.shape[0]
    for i in range(B):
        s_pos = float(q[i] @ pos[i]) * scale
        terms = [s_pos]
        for j in range(pool.shape[0]):
            if not pool_mask[i, j]:
                terms.append(float(q[i] @ pool[j]) * scale - float(pool_log_pi[i, j]))
        for j in range(neg.shape[1]):
            if not neg_mask[i, j]:
                terms.append(float(q[i] @ neg[i, j]) * scale - float(log_pi[i, j]))
        m = max(terms)
        lse = m + math.log(sum(math.exp(t - m) for t in terms))
        total += lse - s_pos
    return total / B


def test_softmax_matches_brute_force_with_masks_and_correction():
    g = torch.Generator().manual_seed(0)
    B, M, k, d = 5, 7, 4, 8
    q, pos = torch.randn(B, d, generator=g), torch.randn(B, d, generator=g)
    pool, neg = torch.randn(M, d, generator=g), torch.randn(B, k, d, generator=g)
    pool_mask = torch.rand(B, M, generator=g) < 0.3
    neg_mask = torch.rand(B, k, generator=g) < 0.3
    log_pi = torch.log(torch.rand(B, k, generator=g))
    pool_log_pi = torch.log(torch.rand(B, M, generator=g))
    got = SoftmaxLoss()(q, pos, 3.0, pool=pool, pool_mask=pool_mask, pool_log_pi=pool_log_pi, neg=neg,
                        neg_mask=neg_mask, neg_log_pi=log_pi)
    want = brute_force(q, pos, 3.0, pool, pool_mask, pool_log_pi, neg, neg_mask, log_pi)
    assert abs(float(got) - want) < 1e-5
    plain = SoftmaxLoss()(q, pos, 3.0, pool=pool, pool_mask=pool_mask, neg=neg, neg_mask=neg_mask)
    assert abs(float(plain) - brute_force(q, pos, 3.0, pool, pool_mask, torch.zeros(B, M), neg, neg_mask,
                                          torch.zeros(B, k))) < 1e-5


def test_inbatch_softmax_equals_cross_entropy_of_similarity_matrix():
    g = torch.Generator().manual_seed(1)
    q, p = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    mask = torch.eye(6, dtype=torch.bool)  # the diagonal is the positive, passed separately
    got = SoftmaxLoss()(q, p, 2.0, pool=p, pool_mask=mask)
    want = torch.nn.functional.cross_entropy(q @ p.T * 2.0, torch.arange(6))
    assert torch.allclose(got, want, atol=1e-6)


def test_masked_false_negative_has_no_gradient():
    q = torch.randn(2, 3, requires_grad=True)
    pool = torch.randn(2, 3, requires_grad=True)
    pos = torch.randn(2, 3)
    mask = torch.tensor([[False, True], [False, False]])
    SoftmaxLoss()(q, pos, 1.0, pool=pool, pool_mask=mask).backward()
    # pool[1] is masked for query 0 and used by query 1; pool[0] is used by both
    q0_only = torch.autograd.grad(SoftmaxLoss()(q[:1], pos[:1], 1.0, pool=pool, pool_mask=mask[:1]), pool)[0]
    assert torch.all(q0_only[1] == 0) and torch.any(q0_only[0] != 0)
