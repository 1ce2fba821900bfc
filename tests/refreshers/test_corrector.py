"""Corrector network: on drift it can represent (a fixed linear map, a smooth non-linear one) the
corrected store approaches the fresh embeddings and the cache sampler's distribution approaches the
fresh softmax; identity at start; the drift loss does not reach the towers, nor the training loss h."""

import pytest
import torch
from samplerkit import encoder, make_store

from negminer.refreshers import Corrector, CorrectorNet, Fresh, relative_change

N, D = 600, 16


def drifted(kind: str, x: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    if kind == "linear":
        return x @ (torch.eye(D) + 0.3 * torch.randn(D, D, generator=g) / D ** 0.5)
    b = torch.randn(D, D, generator=g) / D ** 0.5
    return x + 0.4 * torch.tanh(x @ b)


def run(kind: str, steps: int = 300, apply: str = "all", per_step: int = 24, seed: int = 0, write: bool = True):
    """Raw store X (the tower as it was); the tower now gives Y = drift(X); the first steps re-encode
    ``per_step`` rows of the first half each (as write-back would: pairs (X, Y) for h), then none; the
    second half is never re-encoded."""
    X = torch.randn(N, D, generator=torch.Generator().manual_seed(seed))
    Y = drifted(kind, X)
    store, model = make_store(X)
    model.E = Y
    c = Corrector(D, apply=apply, every=10, lr=3e-3, warmup=5)
    c.setup(store, torch.arange(N // 2, N), encoder(store, model), seed=seed)  # the sampler's rows: the second half
    order = torch.randperm(N // 2, generator=torch.Generator().manual_seed(seed + 1))
    seen = torch.zeros(N, dtype=torch.bool)
    for step in range(steps):
        rows = order[step * per_step:(step + 1) * per_step]
        if len(rows) and write:  # else the pairs come from the training forward alone (no write-back)
            store.write(rows, Y[rows], step + 1)
        seen[rows] = True
        c.after_step(Fresh(step, rows, Y[rows]))
        c.history = getattr(c, "history", []) + [dict(c.stats)]
    return X, Y, store, c, ~seen


@pytest.mark.parametrize("kind", ["linear", "smooth"])
def test_corrected_rows_approach_the_fresh_ones_and_the_softmax_follows(kind):
    X, Y, store, c, never = run(kind)
    before = relative_change(X[never], Y[never])
    after = relative_change(store.embeddings(never.nonzero().squeeze(1)), Y[never])
    assert before > 0.05 and after < 0.15 * before  # rows h never saw encoded, moved by the last rewrite
    q = torch.randn(32, D, generator=torch.Generator().manual_seed(5))
    pool = never.nonzero().squeeze(1)
    p_fresh = torch.softmax(q @ Y[pool].T, 1)  # what the cache sampler draws from, over its rows
    tv_stale = 0.5 * (torch.softmax(q @ X[pool].T, 1) - p_fresh).abs().sum(1).mean()
    tv_corr = 0.5 * (torch.softmax(q @ store.embeddings(pool).T, 1) - p_fresh).abs().sum(1).mean()
    assert tv_corr < 0.5 * tv_stale
    last = [h for h in c.history if "corrector_after" in h][-1]  # the last pairs, scored before h trained on them
    assert last["corrector_after"] < 0.9 * last["corrector_before"]  # after 12 updates: already better


def test_without_any_store_write_it_learns_from_the_training_forward():
    X, Y, store, c, never = run("linear", write=False)
    assert store.target_encodes == 0 and torch.equal(c.raw, X)  # never re-encoded after the fill
    rows = never.nonzero().squeeze(1)
    assert relative_change(store.embeddings(rows), Y[rows]) < 0.15 * relative_change(X[rows], Y[rows])


def test_scored_mode_corrects_reads_and_keeps_the_raw_rows():
    X, Y, store, c, never = run("linear", steps=200, apply="scored")
    rows = never.nonzero().squeeze(1)
    assert torch.equal(store.emb[rows], X[rows])                        # stored rows stay raw
    assert relative_change(store.embeddings(rows), Y[rows]) < 0.15 * relative_change(X[rows], Y[rows])
    q = torch.randn(4, D)
    chunks = torch.cat([s.clone() for _, s in store.score_chunks(q)], 1)  # the sampling pass reads h too
    torch.testing.assert_close(chunks, q @ store.embeddings().T, atol=1e-4, rtol=1e-4)


def test_identity_at_start_and_before_warmup():
    x = torch.randn(50, D)
    net = CorrectorNet(D, 32, depth=3)
    torch.testing.assert_close(net(x, torch.arange(50)), x)
    X, Y, store, c, never = run("linear", steps=4)  # warm-up 5: no rewrite yet
    assert torch.equal(store.emb[never], X[never])


def test_drift_loss_reaches_only_h_and_h_outputs_carry_no_graph():
    tower = torch.nn.Linear(D, D)
    X = torch.randn(N, D)
    store, model = make_store(X)
    c = Corrector(D, warmup=0)
    c.setup(store, None, encoder(store, model))
    rows = torch.arange(40)
    y = tower(X[rows])  # what a training forward gives, with a graph to the tower
    store.write(rows, y.detach(), 1)
    c.after_step(Fresh(0, rows, y.detach()))
    assert all(p.grad is None for p in tower.parameters())
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in c.net.parameters())
    out = c.correct(X[:5], torch.zeros(5))
    assert not out.requires_grad  # what samplers and cached-negative losses read: no path back to h
