"""The tree sampler draws exactly from the softmax over usable rows (chi-square against the exact
distribution, whatever the beam), its log Z bounds contain the exact log Z, its estimate of Z is
unbiased, and it keeps drawing correctly after the store changes."""

import math

import pytest
import torch
from samplerkit import batch, encoder, make_store
from scipy.stats import chisquare

from negminer.samplers import TreeSampler


def setup(n=600, d=8, beam=4, seed=0, scale=4.0, fallback=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(12, d, generator=g)
    E = torch.nn.functional.normalize(c[torch.randint(12, (n,), generator=g)] + 0.4 * torch.randn(n, d, generator=g), dim=1)
    store, model = make_store(E)
    s = TreeSampler(64, beam=beam, branching=4, leaf_size=16, seed=seed, sample_temperature=1 / scale,
                    fallback=fallback)  # 0: never fall back to the exact pass, so rejection is what is tested
    s.setup(store, model, 0, encode=encoder(store, model))
    return E, store, s


def exact_p(q, E, excl, scale):
    s = (q @ E.T) * scale
    s[excl] = -math.inf
    return torch.softmax(s, 0)


def test_draws_follow_the_softmax_and_log_z_is_bounded():
    E, store, s = setup()
    q = E[[0, 300]] * 1.0
    counts = torch.zeros(2, len(E))
    zs = []
    for step in range(60):
        b = batch(E, [0, 300], [{0, 5}, {300}], step=step)
        d = s.sample(q, b, store)
        assert not bool(d.mask.any()) and s.last_stats["tree_fallback"] == 0 and s.last_stats["tree_accept"] < 1
        for i in range(2):
            counts[i] += torch.bincount(d.ids[i], minlength=len(E)).float()
        lo, up = s.log_z_bounds.unbind(1)
        exact = [torch.logsumexp((q[i] @ E.T * 4.0).masked_fill(torch.tensor([r in ({0, 5}, {300})[i] for r in range(len(E))]), -math.inf), 0)
                 for i in range(2)]
        for i in range(2):
            assert float(lo[i]) <= float(exact[i]) + 1e-4 <= float(up[i]) + 2e-4
        zs.append((d.log_pi[:, 0] - math.log(64) - (q * E[d.ids[:, 0]]).sum(1) * 4.0).neg())  # log Z_hat
        assert int(counts[0, 0] + counts[0, 5] + counts[1, 300]) == 0  # exclusions never drawn
    for i, ex in enumerate([[0, 5], [300]]):
        p = exact_p(q[i], E, ex, 4.0)
        keep = p * counts[i].sum() >= 5  # chi-square on the cells with expected count >= 5, the rest pooled
        obs = torch.cat([counts[i][keep], counts[i][~keep].sum().view(1)])
        exp = torch.cat([p[keep], p[~keep].sum().view(1)]) * counts[i].sum()
        assert chisquare(obs.numpy(), exp.numpy()).pvalue > 1e-3
    zh = torch.stack(zs).exp().mean(0)  # E[Z_hat] = Z
    for i, ex in enumerate([[0, 5], [300]]):
        s_ = q[i] @ E.T * 4.0
        s_[ex] = -math.inf
        assert abs(float(zh[i]) / float(s_.exp().sum()) - 1) < 0.05


def test_after_store_writes_the_bounds_and_draws_follow_the_new_embeddings():
    E, store, s = setup(beam=2, seed=1)
    g = torch.Generator().manual_seed(5)
    rows = torch.randint(len(E), (200,), generator=g)
    new = torch.nn.functional.normalize(E[rows] + 0.8 * torch.randn(200, E.shape[1], generator=g), dim=1)
    store.write(rows, new, 1)
    E2 = store.embeddings()
    assert s.tree.check(store.embeddings) <= 1e-5
    q = E2[[10]]
    counts = torch.zeros(len(E))
    for step in range(60):
        d = s.sample(q, batch(E2, [10], [{10}], step=step), store)
        counts += torch.bincount(d.ids[0], minlength=len(E)).float()
    p = exact_p(q[0], E2, [10], 4.0)
    keep = p * counts.sum() >= 5
    obs = torch.cat([counts[keep], counts[~keep].sum().view(1)])
    exp = torch.cat([p[keep], p[~keep].sum().view(1)]) * counts.sum()
    assert chisquare(obs.numpy(), exp.numpy()).pvalue > 1e-3


def test_loose_bounds_fall_back_to_one_exact_pass():
    E = torch.nn.functional.normalize(torch.randn(2000, 32, generator=torch.Generator().manual_seed(0)), dim=1)
    store, model = make_store(E)  # no clusters: every leaf's ball is wide
    s = TreeSampler(64, beam=2, branching=4, leaf_size=16, sample_temperature=1 / 20)  # default fallback 8
    s.setup(store, model, 0)
    b = batch(E, [0, 300], [{0, 5}, {300}])
    d = s.sample(E[[0, 300]], b, store)
    assert s.last_stats["tree_fallback"] == 1 and d.ids.shape == (2, 64) and not bool(d.mask.any())
    assert 0 not in d.ids[0].tolist() and 5 not in d.ids[0].tolist() and 300 not in d.ids[1].tolist()
    assert bool(torch.isfinite(d.log_pi).all())


@pytest.mark.parametrize("mode,beam", [("proposal", 2), ("descend", 2), ("descend", 1)])
def test_proposal_modes_draw_from_their_exact_q_and_the_estimate_of_z_is_unbiased(mode, beam):
    """--tree-mode proposal (leaf by centroid mass, the beam's leaves by exact mass) and descend (a leaf among the
    beam search's candidates by exact mass, or any by size; with beam 1 query 0's only candidate is its positive's
    leaf, wholly excluded, so all its draws come from the tail), a row within the leaf exactly: the draws
    follow Q as ``cross`` computes it (a separate code path), log pi is log k Q_j exactly (so sum exp(s - log pi) is
    unbiased for Z), Q sums to one over the usable rows and is 0 on excluded ones, and no step falls back to a
    full pass; spread clusters (loose bounds) and a leaf whose every row is excluded for one query."""
    E, store, s = setup(beam=beam, seed=2)
    s.mode = mode
    leaf = s.tree.leaf_of
    full = s.tree.members[int(leaf[7])]
    ex = [set(full[full >= 0].tolist()) | {7}, {300}]     # query 0: its positive's whole leaf excluded
    q = E[[7, 300]] * 1.0
    counts, zs, masked = torch.zeros(2, len(E)), [], torch.zeros(2)
    for step in range(150):
        b = batch(E, [7, 300], ex, step=step)
        d = s.sample(q, b, store)
        assert s.last_stats["tree_fallback"] == 0 and 0 <= s.last_stats["tree_tv"] <= 1
        assert mode != "descend" or beam != 1 or s.last_stats["tree_cand_draws"] < 0.95  # query 0: tail draws only
        masked += d.mask.sum(1)
        for i in range(2):
            counts[i] += torch.bincount(d.ids[i][~d.mask[i]], minlength=len(E)).float()
        w = ((q.unsqueeze(1) * E[d.ids]).sum(-1) * 4.0 - d.log_pi).exp().masked_fill(d.mask, 0).sum(1)
        zs.append(w)
    log_kq = d.cross(torch.arange(len(E)))             # [2, N]: log k Q over every row
    qd = (log_kq - math.log(64)).exp()
    assert torch.allclose(s.proposal(q, b, store).exp(), qd, atol=1e-6)  # what the diagnostics' TV reads
    for i in range(2):
        bad = torch.tensor([r in ex[i] for r in range(len(E))])
        assert float(qd[i][bad].sum()) == 0 and int(counts[i][bad].sum()) == 0
        dead = 1 - float(qd[i].sum())  # Q's mass on a leaf with no usable row: drawn there, a slot is masked
        assert -1e-4 < dead and (dead < 1e-4 or (mode == "descend" and i == 0))  # descend has no beam to score it
        n = 150 * 64
        assert abs(float(masked[i]) / n - dead) <= 4 * math.sqrt(max(dead, 1e-4) / n) + 1e-4
        keep = qd[i] * counts[i].sum() >= 5
        obs = torch.cat([counts[i][keep], counts[i][~keep].sum().view(1)])
        exp = torch.cat([qd[i][keep], qd[i][~keep].sum().view(1)]) / qd[i].sum() * counts[i].sum()
        assert chisquare(obs.numpy(), exp.numpy()).pvalue > 1e-3
        p = exact_p(q[i], E, sorted(ex[i]), 4.0)
        assert float((p - qd[i]).abs().sum()) > 0.01     # a proposal, not the softmax
        z = float((q[i] @ E.T * 4.0).masked_fill(bad, -math.inf).exp().sum())
        zh = torch.stack(zs)[:, i]
        assert abs(float(zh.mean()) / z - 1) < 3 * float(zh.std()) / math.sqrt(len(zh)) / z
