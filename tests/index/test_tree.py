"""The k-means tree: every node's bound holds after builds, updates, re-insertions and local
rebuilds (hypothesis); exact top-k equals brute force; the beam is a subset of the truth."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from negminer.index import KMeansTree


def clustered(n, d, centres, spread, seed):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(centres, d, generator=g)
    return c[torch.randint(centres, (n,), generator=g)] + spread * torch.randn(n, d, generator=g)


class Emb:
    """A mutable embedding table standing in for the store."""

    def __init__(self, x):
        self.x = x.clone()

    def __call__(self, rows):
        return self.x[torch.as_tensor(rows, dtype=torch.long)]


def sorted_members(t):
    return sorted(t.members[t.members >= 0].tolist())


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 400), d=st.integers(1, 12), b=st.integers(2, 6), leaf=st.integers(1, 40),
       seed=st.integers(0, 10**6), moves=st.lists(st.tuples(st.integers(0, 10**6), st.floats(0.0, 3.0)), max_size=6),
       degrade=st.floats(1.05, 3.0))
def test_bounds_hold_through_builds_updates_and_local_rebuilds(n, d, b, leaf, seed, moves, degrade):
    e = Emb(clustered(n, d, 5, 0.3, seed))
    t = KMeansTree(branching=b, leaf_size=leaf, degrade=degrade, seed=seed).build(e, n)
    t.bind(e)
    assert t.check(e) <= 1e-5 and sorted_members(t) == list(range(n))
    assert int(t.count(0, torch.tensor([0]), live=True)) == n
    assert int(t.fill.max()) <= max(leaf, 1) or t.depth == 0
    g = torch.Generator().manual_seed(seed + 1)
    for s, size in moves:
        rows = torch.randint(n, (1 + s % max(1, n // 2),), generator=g)
        e.x[rows] += size * torch.randn(len(rows), d, generator=g)  # some leave their ball, some stay
        t.update(rows, e(rows))
        assert t.check(e) <= 1e-4, "a node's radius does not cover a descendant"
        assert sorted_members(t) == list(range(n)), "a row was lost or duplicated"
        assert int(t.count(0, torch.tensor([0]), live=True)) == n
        for lv in range(1, t.depth + 1):  # no node below the root is left degraded
            assert bool((t.radius[lv] <= degrade * t.built_radius[lv] + 1e-5).all())


def test_moved_rows_are_reinserted_and_degraded_subtrees_rebuilt():
    e = Emb(clustered(2000, 8, 20, 0.1, 0))
    t = KMeansTree(branching=4, leaf_size=32, degrade=1.5, seed=0).build(e, 2000)
    t.bind(e)
    rows = torch.arange(0, 2000, 7)
    e.x[rows] = e.x[rows.flip(0)]  # swap rows across clusters
    info = t.update(rows, e(rows))
    assert info["moved"] > 0.5 * len(rows) and t.check(e) <= 1e-5
    e.x += 0.5 * torch.randn(2000, 8, generator=torch.Generator().manual_seed(3))
    info = t.update(torch.arange(2000), e.x)
    assert info["rebuilt"] >= 1 and t.check(e) <= 1e-5 and sorted_members(t) == list(range(2000))


def test_exact_topk_equals_brute_force_and_beam_is_a_subset():
    e = Emb(torch.nn.functional.normalize(clustered(3000, 16, 30, 0.2, 1), dim=1))
    t = KMeansTree(branching=8, leaf_size=24, seed=1).build(e, 3000)
    q = torch.randn(10, 16, generator=torch.Generator().manual_seed(2))
    s, r = t.topk(q, 15, e)
    bs, br = (q @ e.x.T).topk(15, dim=1)
    torch.testing.assert_close(s, bs, atol=1e-5, rtol=1e-5)
    assert all(set(r[i].tolist()) == set(br[i].tolist()) for i in range(10))
    sb, rb = t.topk(q, 15, e, beam=4)
    assert bool((sb <= s + 1e-6).all())  # approximate: never better than the truth
    found = sum(len(set(rb[i].tolist()) & set(br[i].tolist())) for i in range(10)) / 150
    assert found > 0.5


def test_exclusions_and_checkpoint_round_trip():
    e = Emb(clustered(500, 6, 4, 0.5, 4))
    t = KMeansTree(branching=3, leaf_size=20, seed=4).build(e, 500)
    q = e.x[:3] + 0.01
    excl = torch.tensor([0, 1, 2])
    s, r = t.topk(q, 5, e, exclude=lambda rows: rows == excl.view(-1, 1))
    assert all(int(excl[i]) not in r[i].tolist() for i in range(3))
    u = KMeansTree(branching=3, leaf_size=20).load_state(t.state("tree"), "tree")
    assert torch.equal(u.members, t.members) and u.depth == t.depth
    s2, r2 = u.topk(q, 5, e)
    s1, r1 = t.topk(q, 5, e)
    assert torch.equal(r1, r2) and not math.isnan(float(s2.sum()))


def test_stragglers_get_their_own_leaves():
    """A few rows far from every cluster (and fragments of one cluster cut off by a top-level split)
    widen their leaf's ball to the distance between clusters; the refinement phase splits them off, so
    no leaf spans two clusters, without shattering the clusters themselves."""
    g = torch.Generator().manual_seed(3)
    x = torch.cat([clustered(1600, 8, 40, 0.05, 3), 3 * torch.randn(40, 8, generator=g)])
    e = Emb(x)
    plain = KMeansTree(branching=4, leaf_size=64, gain=0).build(e, len(x))
    split = KMeansTree(branching=4, leaf_size=64).build(e, len(x))
    r0, r1 = plain.radius[plain.depth], split.radius[split.depth]
    assert split.check(e) <= 1e-5 and sorted_members(split) == list(range(len(x)))
    assert float(r1.max()) < 1.0 < float(r0.max())  # cluster radius ~0.2, centres ~4 apart
    assert len(split.members) <= len(plain.members) + 40 + 10  # about one more leaf per straggler


def test_batched_build_cuts_big_nodes_in_row_chunks(monkeypatch):
    """Nodes larger than one padded block are assigned in row chunks, smaller ones padded together:
    with a tiny block both paths run, and every row still lands in exactly one leaf within its bounds."""
    from negminer.index import segmented

    monkeypatch.setattr(segmented, "BLOCK_ROWS", 48)
    x = clustered(900, 6, 12, 0.1, 5)
    e = Emb(x)
    t = KMeansTree(branching=4, leaf_size=30, seed=2).build(e, len(x))
    assert t.check(e) <= 1e-5 and sorted_members(t) == list(range(len(x)))
    assert int(t.fill.max()) <= 30 and len(t.members) >= 900 // 30
    q = torch.randn(5, 6)
    s, r = t.topk(q, 7, e)
    assert torch.allclose(s, (q @ x.T).topk(7, dim=1).values, atol=1e-5)
