"""The chunked, gradient-cached encoding of every target gives the plain full-batch gradient, dropout on."""

import pytest
import torch

from negminer.losses.softmax import SoftmaxLoss
from negminer.memory import encode_cached


class Tower(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(12, 32), torch.nn.Linear(32, 8)
        self.drop = torch.nn.Dropout(0.3)

    def forward(self, x):
        return torch.nn.functional.normalize(self.b(self.drop(torch.tanh(self.a(x)))), dim=-1)


def grads(tower, q_tower, feats, qx, pos_rows, mask, chunk):
    tower.zero_grad(), q_tower.zero_grad()
    torch.manual_seed(7)
    q = q_tower(qx)
    if chunk is None:
        emb = tower(feats)
    else:
        enc = encode_cached(lambda rows: tower(feats[rows]), len(feats), chunk)
        emb = enc.emb
    loss = SoftmaxLoss()(q, emb[pos_rows], 20.0, pool=emb, pool_mask=mask)
    loss.backward()
    if chunk is not None:
        enc.backward()
    after = torch.rand(1)  # the global RNG ends where the plain pass leaves it
    return loss.detach(), [p.grad.clone() for p in (*tower.parameters(), *q_tower.parameters())], after


@pytest.mark.parametrize("chunk", [1, 7, 50, 64])
def test_gradient_equals_full_batch_with_dropout(chunk):
    torch.manual_seed(0)
    tower, q_tower = Tower().double(), Tower().double()
    feats, qx = torch.randn(50, 12, dtype=torch.float64), torch.randn(6, 12, dtype=torch.float64)
    pos_rows = torch.tensor([3, 9, 9, 20, 41, 0])
    mask = torch.zeros(6, 50, dtype=torch.bool)
    mask[torch.arange(6), pos_rows] = True
    l0, g0, r0 = grads(tower, q_tower, feats, qx, pos_rows, mask, None)
    l1, g1, r1 = grads(tower, q_tower, feats, qx, pos_rows, mask, chunk)
    assert torch.allclose(l0, l1, atol=1e-12)
    for a, b in zip(g0, g1):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    # a different mask per pass would not match: the replayed RNG is what makes them equal
    tower.train()
    assert any(not torch.equal(tower(feats), tower(feats)) for _ in range(1))
    if chunk == 50:
        assert torch.equal(r0, r1)
