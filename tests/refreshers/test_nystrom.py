"""Nystrom: exact when the true change is a linear map and the landmarks span the rows; moved rows
keep their age; the ridge keeps a map fitted on too few landmarks near the identity."""

import torch
from samplerkit import encoder, make_store

from negminer.refreshers import Fresh, Nystrom, fit_map
from negminer.store.oldest import OldestFirst


def setup(n=300, d=16, m=40, ridge=0.0, seed=0, pool=None):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    A = torch.eye(d) + 0.3 * torch.randn(d, d, generator=g)
    Y = X @ A  # what the current tower would give
    store, model = make_store(X)
    model.E = Y  # re-encoding returns the new embeddings
    r = Nystrom(landmarks=m, every=5, ridge=ridge)
    r.setup(store, pool, encoder(store, model), seed=seed)
    return X, Y, store, model, r


def fresh(step):
    return Fresh(step, torch.tensor([0]), torch.zeros(1, 1))


def test_exact_for_a_linear_change_with_spanning_landmarks():
    X, Y, store, model, r = setup()
    r.after_step(fresh(3))  # step 4: not due
    assert store.target_encodes == 0 and torch.equal(store.embeddings(), X)
    r.after_step(fresh(4))  # step 5: due
    assert store.target_encodes == 40 and model.calls == 40
    torch.testing.assert_close(store.embeddings(), Y, atol=1e-3, rtol=1e-3)
    fresh_rows = (store.age == 5).nonzero().flatten()
    assert len(fresh_rows) == 40 and int((store.age == 0).sum()) == 260  # moved rows keep their age
    assert r.stats["nystrom_before"] > 0.05 and r.stats["nystrom_after"] < 1e-8


def test_only_the_pool_moves():
    pool = torch.arange(0, 300, 2)
    X, Y, store, model, r = setup(pool=pool)
    r.after_step(fresh(4))
    torch.testing.assert_close(store.embeddings(pool), Y[pool], atol=1e-3, rtol=1e-3)
    rest = torch.arange(1, 300, 2)
    assert torch.equal(store.embeddings(rest), X[rest])


def test_a_map_from_too_few_landmarks_stays_near_the_identity():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 16, generator=g), torch.randn(4, 16, generator=g)
    a = fit_map(x, y, ridge=1e-3)
    assert torch.isfinite(a).all()
    u = torch.randn(16, generator=g)
    u = u - x.T @ torch.linalg.lstsq(x.T, u).solution  # orthogonal to the landmarks: left where it is
    torch.testing.assert_close(u @ a, u, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fit_map(x, y, ridge=1e9), torch.eye(16), atol=1e-5, rtol=0)


def test_moves_do_not_reorder_the_oldest_first_queue():
    X, Y, store, model, r = setup()
    q = OldestFirst(store)
    store.write(torch.arange(10), X[:10], 1)  # rows 0..9 now younger than the rest
    r.after_step(fresh(4))  # landmarks re-encoded at 5, everything else moved
    popped = q.pop(300).tolist()
    ages = store.age[popped].tolist()
    assert ages == sorted(ages) and set(popped[-50:]) >= set(range(10)) - set((store.age == 5).nonzero().flatten().tolist())


def test_a_map_that_makes_held_out_landmarks_staler_is_not_applied():
    """Each row drifts on its own (no linear map explains it): fitted on 32 landmarks in d = 16, the map
    overfits, the held-out fifth says so, and the other rows stay where they were."""
    g = torch.Generator().manual_seed(2)
    X = torch.randn(300, 16, generator=g)
    Y = X + 0.5 * torch.randn(300, 16, generator=g)
    store, model = make_store(X)
    model.E = Y
    r = Nystrom(landmarks=40, every=5, ridge=0.0)
    r.setup(store, None, encoder(store, model), seed=0)
    r.after_step(fresh(4))
    assert r.stats["nystrom_applied"] == 0.0 and r.stats["nystrom_after"] >= r.stats["nystrom_before"]
    moved = store.age == 0
    assert int(moved.sum()) == 260 and torch.equal(store.embeddings(moved.nonzero().flatten()), X[moved])
