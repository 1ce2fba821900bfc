"""Refresh and streaming: counters, ages and eviction order are exact; no sampler returns a positive;
a query with fewer usable candidates than k gets masked slots while the others get k."""

import math

import pytest
import torch
from samplerkit import batch, encoder, make_store, unit

from negminer.refreshers import Fraction, Fresh
from negminer.samplers import AnceSampler, CacheSampler, CacheStreamSampler, ExactSampler, TreeSampler, UniformSampler


def make(n=50, d=8, seed=0):
    E = unit(n, d, seed)
    store, model = make_store(E, fill=False)
    return E, store, model


def test_cache_refresh_oldest_first_counts_and_ages():
    E, store, model = make()
    enc = encoder(store, model)
    s = CacheSampler(4, cache_size=20, seed=3)
    s.setup(store, model, 0, encode=enc)
    r = Fraction(0.1, "oldest")
    r.setup(store, s.pool_rows(store), enc, seed=3)
    rows = s.rows
    assert len(rows) == 20 and store.target_encodes == 20 and (store.age[rows] == 0).all()
    assert (store.age[[r for r in range(50) if r not in set(rows.tolist())]] == -1).all()
    b = batch(E, rows[:3])
    d = s.sample(E[:3], b, store)
    assert d.ids.shape == (3, 4) and set(d.ids.flatten().tolist()) <= set(rows.tolist())
    written = torch.cat([d.ids.flatten(), rows[:3]]).unique()
    store.write(written, E[written], 4)  # the write-back during step 4
    r.after_step(Fresh(4, rows[:3], E[rows[:3]]))  # then the 2 oldest are re-encoded at 5
    assert store.target_encodes == 22 and model.calls == 22
    expected = [int(x) for x in rows if int(x) not in set(written.tolist())][:2]  # age 0, ties by row
    assert sorted(int(x) for x in rows if store.age[x] == 5) == expected


def test_cache_refresh_random_is_seeded_and_without_repeats():
    ages = []
    for _ in range(2):
        E, store, model = make()
        s = CacheSampler(2, seed=1)
        s.setup(store, model, 0, encode=encoder(store, model))
        r = Fraction(0.2, "random")
        r.setup(store, s.pool_rows(store), encoder(store, model), seed=1)
        r.after_step(Fresh(0, torch.tensor([0, 1]), E[[0, 1]]))
        ages.append(store.age.clone())
    assert torch.equal(ages[0], ages[1]) and int((ages[0] == 1).sum()) == 10


@pytest.mark.parametrize("policy", ["fifo", "lru"])
def test_stream_eviction_order(policy):
    E, store, model = make()
    s = CacheStreamSampler(1, cache_size=4, policy=policy)
    ref = []  # reference: a list, oldest first

    def touch(r):
        if r in ref:
            if policy == "lru":
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
        assert set(d.ids[~d.mask].tolist()) <= set(ref)
        store.write(torch.tensor(pos), E[pos], step)
        s.update(b, d, model, store, step + 1)
        if policy == "lru":
            for r in d.ids[~d.mask].tolist():
                touch(r)
        for r in pos:
            touch(r)
        assert list(s.queue) == ref, (step, list(s.queue), ref)
    if policy == "fifo":
        assert list(s.queue) == [3, 5, 6, 7]  # 1 and 2 left first; re-seen 3 kept its place


SAMPLERS = [lambda: UniformSampler(30), lambda: ExactSampler(10), lambda: ExactSampler(10, selection="topk"),
            lambda: AnceSampler(10, top=20), lambda: CacheSampler(10), lambda: CacheSampler(10, replacement=True),
            lambda: CacheSampler(10, prefilter_top=20, prefilter_nlist=5, prefilter_nprobe=5),
            lambda: TreeSampler(10, beam=2, branching=3, leaf_size=6)]
IDS = ["uniform", "exact", "exact-topk", "ance", "cache", "cache-repl", "cache-prefilter", "tree"]


@pytest.mark.parametrize("make_sampler", SAMPLERS, ids=IDS)
def test_no_sampler_returns_a_usable_positive(make_sampler):
    E, store, model = make()
    s = make_sampler()
    s.setup(store, model, 0, encode=encoder(store, model))
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


@pytest.mark.parametrize("make_sampler", SAMPLERS[1:3] + SAMPLERS[4:], ids=IDS[1:3] + IDS[4:])
def test_a_query_with_few_candidates_does_not_shorten_the_others(make_sampler):
    E, store, model = make(n=30)
    s = make_sampler()
    s.k = 6
    s.setup(store, model, 0, encode=encoder(store, model))
    exclude = [set(range(26)), {1}]  # query 0 keeps 4 usable targets (26..29), query 1 keeps 29
    b = batch(E, [0, 1], exclude)
    d = s.sample(E[[0, 1]], b, store)
    if not s.replacement and getattr(s, "prefilter", None) is None:  # a prefilter may not reach all four
        assert int((~d.mask[0]).sum()) == 4 and set(d.ids[0][~d.mask[0]].tolist()) == {26, 27, 28, 29}
    assert not d.mask[1].any()
    assert set(d.ids[0][~d.mask[0]].tolist()) <= {26, 27, 28, 29}


def test_margin_drops_near_duplicates():
    E, store, model = make()
    s = ExactSampler(5, selection="topk", margin=0.0)
    s.setup(store, model, 0, encode=encoder(store, model))
    q = E[[0]]
    d = s.sample(q, batch(E, [0]), store)
    scores = (q @ E.T)[0]
    for j, r in enumerate(d.ids[0].tolist()):
        assert d.mask[0, j] or float(scores[r]) <= float(scores[0]) + 1e-6
