"""ContAccum's memory bank: FIFO contents, and the loss it gives against a per-anchor brute force
(candidates masked by exclusions, each target once, the fresh copy first, memory rows as anchors)."""

import math

import pytest
import torch

from negminer.losses import SoftmaxLoss
from negminer.pipeline import loss_inputs
from negminer.memory.contaccum import MemoryBank
from negminer.samplers import Batch, Draw, Exclusions

N = 40  # targets
# training query i: positives {i, i + 20} for even i (two positives), {i} otherwise; row 39 duplicates row 38
POS = {i: ({i % 20, i % 20 + 20} if i % 2 == 0 else {i % 20}) for i in range(20)}
DUPS = {38: {39}, 39: {38}}


def exclude(i):
    ex = set(POS[i])
    for r in POS[i]:
        ex |= DUPS.get(r, set())
    return ex


def test_fifo_keeps_the_last_pairs_and_their_negatives():
    bank = MemoryBank(5)
    for t in range(4):  # micro-batches of 2 pairs, 3 drawn negatives each
        bank.push(torch.full((2, 3), float(t)), torch.full((2, 3), t + 0.5), [2 * t, 2 * t + 1], [t, t],
                  torch.full((3, 3), -float(t)), [30 + t, 31 + t, 32 + t])
    assert len(bank) == 5
    assert bank.p_rows.tolist() == [3, 4, 5, 6, 7]             # the oldest pairs fell out
    assert bank.q[:, 0].tolist() == [1, 2, 2, 3, 3]
    assert bank.n_rows.tolist() == [31, 32, 33, 32, 33, 34, 33, 34, 35]  # push 0's negatives went with its pairs
    t, m = bank.state()
    other = MemoryBank(5)
    other.load_state(t, m, "cpu")
    for k in MemoryBank.names:
        assert torch.equal(getattr(other, k), getattr(bank, k))
    assert other.pushes == bank.pushes == 4


def scenario(seed, dual, with_neg):
    g = torch.Generator().manual_seed(seed)
    d = 6
    bank = MemoryBank(6, dual=dual)
    # earlier micro-batches: queries 0..7 with one positive each; rows chosen to collide with the local batch
    for qi, rows, nrows in (([0, 1, 2], [0, 1, 2], [38, 25, 22]), ([3, 4, 5], [3, 24, 5], [10, 25, 34]),
                            ([6, 18], [6, 38], [33, 4, 39])):
        bank.push(torch.randn(len(qi), d, generator=g), torch.randn(len(qi), d, generator=g), rows, qi,
                  torch.randn(len(nrows), d, generator=g), nrows, [exclude(i) for i in qi], [POS[i] for i in qi])
    local_q = [10, 11, 18, 14]
    local_rows = [10, 11, 18, 14]  # 10 is also in the bank (the fresh copy wins); 34 in the bank is 14's other
    # positive, 22 and 4 the bank queries 2's and 4's; 39 in the bank duplicates 18's positive 38
    q = torch.randn(4, d, generator=g, dtype=torch.float64, requires_grad=True)
    p = torch.randn(4, d, generator=g, dtype=torch.float64, requires_grad=True)
    neg = torch.randn(4, 2, d, generator=g, dtype=torch.float64, requires_grad=True) if with_neg else None
    return bank, local_q, local_rows, q, p, neg


def brute(bank, local_q, local_rows, q, p, neg, scale, dual):
    """-mean over anchors of log softmax over the usable candidates, one loop per anchor."""
    cands = [(int(r), p[j]) for j, r in enumerate(local_rows)]
    seen = set(local_rows)
    for r, e in reversed(list(zip(torch.cat([bank.p_rows, bank.n_rows]).tolist(), torch.cat([bank.p, bank.n])))):
        if r not in seen:  # the newest bank copy of a target the micro-batch does not have
            cands.append((r, e.double()))
            seen.add(r)
    anchors = [(i, q[a], p[a], local_rows[a], a) for a, i in enumerate(local_q)]
    if dual:
        anchors += [(int(i), bank.q[a].double(), bank.p[a].double(), int(bank.p_rows[a]), None)
                    for a, i in enumerate(bank.q_idx.tolist())]
    losses = []
    for i, qa, pa, own, a in anchors:
        terms = [scale * qa @ pa]
        for j, (r, e) in enumerate(cands):
            if r in exclude(i) or (j < len(local_rows) and j == a):
                continue
            terms.append(scale * qa @ e)
        if neg is not None and a is not None:
            terms += [scale * qa @ neg[a, k] for k in range(neg.shape[1])]
        t = torch.stack(terms)
        losses.append(torch.logsumexp(t, 0) - t[0])
    return torch.stack(losses).mean()


@pytest.mark.parametrize("dual", [True, False])
@pytest.mark.parametrize("with_neg", [False, True])
def test_softmax_with_the_bank_equals_the_brute_force(dual, with_neg):
    bank, local_q, local_rows, q, p, neg = scenario(1, dual, with_neg)
    excl = Exclusions([exclude(i) for i in local_q], N)
    batch = Batch(0, torch.tensor(local_rows), excl, p.detach(), torch.Generator(), 3.0,
                  queries=torch.tensor(local_q))
    k = 2 if with_neg else 0
    draw = Draw(torch.tensor([[30, 31]] * 4), torch.zeros(4, 2, dtype=torch.bool)) if with_neg else Draw.empty(4)
    kw = loss_inputs(SoftmaxLoss(), q, p, 3.0, batch, draw, neg)
    out = bank.extend(kw, batch, N)
    got = SoftmaxLoss()(**{k_: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v)
                           for k_, v in out.items()})
    want = brute(bank, local_q, local_rows, q, p, neg, 3.0, dual)
    assert out["q"].shape[0] == 4 + (6 if dual else 0) and k == (neg.shape[1] if with_neg else 0)
    gq, gp = torch.autograd.grad(got, (q, p))
    wq, wp = torch.autograd.grad(want, (q, p))
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-6)  # the loss computes in float32
    assert torch.allclose(gq, wq, atol=1e-6) and torch.allclose(gp, wp, atol=1e-6)


def test_memory_anchors_give_the_target_tower_gradient_and_the_loss_its_mean():
    """With the dual bank the local positives get gradient from the bank's queries too."""
    outs = {}
    for dual in (True, False):
        bank, local_q, local_rows, q, p, _ = scenario(2, dual, False)
        excl = Exclusions([exclude(i) for i in local_q], N)
        batch = Batch(0, torch.tensor(local_rows), excl, p.detach(), torch.Generator(), 3.0)
        kw = bank.extend(loss_inputs(SoftmaxLoss(), q, p, 3.0, batch, Draw.empty(4), None), batch, N)
        loss = SoftmaxLoss()(**{k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v)
                                for k, v in kw.items()})
        outs[dual] = torch.autograd.grad(loss * len(kw["q"]), (q, p))  # summed over anchors
    (qd, pd), (qp, pp) = outs[True], outs[False]
    assert torch.allclose(qd, qp, atol=1e-5)         # the local queries' terms are the same
    assert (pd - pp).norm() > 1e-3                     # the bank's queries pull on the local positives


def test_pool_positives_with_the_bank():
    """decoupled / topk / triplet: a candidate is a term for an anchor iff it is one of the anchor's positives
    other than its own, kept (not a stale copy), brute force over every cell."""
    from negminer.losses import build_loss

    bank, local_q, local_rows, q, p, _ = scenario(3, True, False)
    positives = Exclusions([POS[i] for i in local_q], N)
    batch = Batch(0, torch.tensor(local_rows), Exclusions([exclude(i) for i in local_q], N), p.detach(),
                  torch.Generator(), 3.0, positives=positives)
    loss = build_loss("decoupled")
    out = bank.extend(loss_inputs(loss, q, p, 3.0, batch, Draw.empty(4), None), batch, N)
    rows = local_rows + torch.cat([bank.p_rows, bank.n_rows]).tolist()
    kept = [True] * 4 + [r not in local_rows and r not in rows[j + 1:] for j, r in enumerate(rows) if j >= 4]
    anchors = list(zip(local_q, local_rows)) + list(zip(bank.q_idx.tolist(), bank.p_rows.tolist()))
    want = torch.tensor([[kept[j] and r in POS[i] and r != own for j, r in enumerate(rows)] for i, own in anchors])
    assert torch.equal(out["pool_pos"].cpu(), want) and bool(want.any())
    assert not bool((out["pool_pos"] & ~out["pool_mask"]).any())  # every term is masked as a negative
    assert math.isfinite(float(loss(**out).detach()))
