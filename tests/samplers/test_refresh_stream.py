"""Refresh and streaming: counters, ages and eviction order are exact; no sampler returns a positive."""

import math

import pytest
import torch

from negminer.samplers import AnceSampler, Batch, CacheSampler, CacheStreamSampler, ExactSampler, UniformSampler
from negminer.store import TargetStore


class Model:
    """Target text i tokenises to [i] and embeds to E[i]; counts encodes."""

    target_max_length = 1

    def __init__(self, E):
        self.E, self.calls, self.target_tower = E, 0, self

    def target_token_ids(self, texts):
        return [[int(t)] for t in texts]

    def encode_target_ids(self, ids, batch_size=128, progress=False):
        self.calls += len(ids)
        return self.E[[x[0] for x in ids]]


def make(n=50, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    E = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)
    store = TargetStore([str(i) for i in range(n)], [str(i) for i in range(n)], d)
    return E, store, Model(E)


def batch(E, pos, exclude=None, step=0):
    pos = torch.as_tensor(pos)
    return Batch(step, pos, exclude or [{int(p)} for p in pos], E[pos], torch.Generator().manual_seed(step), 20.0)


def test_cache_refresh_oldest_first_counts_and_ages():
    E, store, model = make()
    s = CacheSampler(4, cache_size=20, refresh_fraction=0.1, refresh_order="oldest", seed=3)
    s.setup(store, model, 0)
    rows = s.rows
    assert len(rows) == 20 and store.target_encodes == 20 and (store.age[rows] == 0).all()
    assert (store.age[[r for r in range(50) if r not in set(rows.tolist())]] == -1).all()
    q = E[:3]
    b = batch(E, rows[:3])
    d = s.sample(q, b, store)
    assert d.ids.shape == (3, 4) and set(d.ids.flatten().tolist()) <= set(rows.tolist())
    s.update(b, d, E[d.ids], model, store, step=5)  # drawn + positives written at step 4, 2 oldest re-encoded at 5
    assert store.target_encodes == 22 and model.calls == 22
    written = set(d.ids.flatten().tolist()) | set(rows[:3].tolist())
    assert all(store.age[r] == 4 for r in written)
    expected_refreshed = [int(r) for r in rows if int(r) not in written][:2]  # age 0, ties by row
    assert sorted(int(r) for r in rows if store.age[r] == 5) == expected_refreshed
    assert s.last_stats["staleness"] == pytest.approx(0.0, abs=1e-6)


def test_cache_refresh_random_is_seeded():
    E, store, model = make()
    a = CacheSampler(2, refresh_fraction=0.2, refresh_order="random", seed=1)
    a.setup(store, model, 0)
    b = batch(E, [0, 1])
    a.update(b, a.sample(E[:2], b, store), None, model, store, 1)
    ages_a = store.age.clone()
    E2, store2, model2 = make()
    c = CacheSampler(2, refresh_fraction=0.2, refresh_order="random", seed=1)
    c.setup(store2, model2, 0)
    c.update(b, c.sample(E[:2], b, store2), None, model2, store2, 1)
    assert torch.equal(ages_a, store2.age) and int((store.age == 1).sum()) == 10


@pytest.mark.parametrize("policy", ["fifo", "lru"])
def test_stream_eviction_order(policy):
    E, store, model = make()
    s = CacheStreamSampler(1, cache_size=4, policy=policy)
    ref = []  # reference: a list, oldest first

    def touch(r, used):
        if r in ref:
            if policy == "lru" and used:
                ref.remove(r), ref.append(r)
        else:
            ref.append(r)
        while len(ref) > 4:
            ref.pop(0)

    for step, pos in enumerate([[1, 2], [3, 1], [5, 6], [7, 3]]):
        b = batch(E, pos, step=step)
        d = s.sample(E[pos], b, store)
        if step == 0:
            assert d.ids.numel() == 0  # an empty queue draws nothing
        assert set(d.ids.flatten().tolist()) <= set(ref)
        s.update(b, d, E[d.ids] if d.ids.numel() else None, model, store, step + 1)
        for r in d.ids.flatten().tolist():
            touch(r, used=True)
        for r in pos:
            touch(r, used=True)
        assert list(s.queue) == ref, (step, list(s.queue), ref)
    if policy == "fifo":
        assert list(s.queue) == [3, 5, 6, 7]  # 1 and 2 left first; re-seen 3 kept its place
    assert store.target_encodes == 0 and (store.age[[7, 3]] == 3).all()  # encoded during step 3


@pytest.mark.parametrize("make_sampler", [
    lambda: UniformSampler(30), lambda: ExactSampler(10), lambda: ExactSampler(10, selection="topk"),
    lambda: AnceSampler(10, top=20), lambda: CacheSampler(10), lambda: CacheSampler(10, replacement=True)],
    ids=["uniform", "exact", "exact-topk", "ance", "cache", "cache-repl"])
def test_no_sampler_returns_a_usable_positive(make_sampler):
    E, store, model = make()
    s = make_sampler()
    s.setup(store, model, 0)
    pos = [0, 1, 2, 3]
    exclude = [{0, 10, 11}, {1, 12}, {2}, {3, 13, 14, 15}]  # positives and their duplicates
    for step in range(5):
        b = batch(E, pos, exclude, step)
        q = E[pos] + 0.01  # the positives themselves score highest
        d = s.sample(q, b, store)
        for i in range(4):
            for j, r in enumerate(d.ids[i].tolist()):
                assert d.mask[i, j] or r not in exclude[i], (i, r)
        logq = s.proposal(q, b, store)
        for i in range(4):
            assert all(math.isinf(float(logq[i, r])) for r in exclude[i])


def test_margin_drops_near_duplicates():
    E, store, model = make()
    s = ExactSampler(5, selection="topk", margin=0.0)
    s.setup(store, model, 0)
    q = E[[0]]
    b = batch(E, [0])
    d = s.sample(q, b, store)
    scores = (q @ E.T)[0]
    s_pos = float(scores[0])
    for j, r in enumerate(d.ids[0].tolist()):
        assert d.mask[0, j] or float(scores[r]) <= s_pos
