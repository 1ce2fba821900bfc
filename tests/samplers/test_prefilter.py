"""IVF top-K prefilter of the cache: exact when every list is probed, high recall when few are, draws
follow the softmax truncated to the candidates, state round-trips for exact resume."""

import math

import numpy as np
import torch
from scipy.stats import chisquare

from samplerkit import batch, encoder, make_store

from negminer.samplers import CacheSampler
from negminer.samplers.prefilter import IVFPrefilter


def clustered(n=4000, d=16, centers=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(centers, d, generator=g)
    x = c[torch.randint(centers, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g)
    return torch.nn.functional.normalize(x, dim=-1)


def searched(E, q, top, nlist, nprobe):
    f = IVFPrefilter(top=top, nlist=nlist, nprobe=nprobe, seed=0)
    f.build(lambda p: E[p], len(E), step=0)
    return f.search(q, lambda p: E[p])


def recall(pos, ref):
    return np.mean([len(set(a.tolist()) & set(b.tolist())) / ref.shape[1] for a, b in zip(pos, ref)])


def test_all_lists_probed_is_exact_top_k():
    E, q = clustered(), clustered(n=32, seed=1)
    pos, val = searched(E, q, top=50, nlist=30, nprobe=30)
    ref_val, ref_pos = (q @ E.T).topk(50, dim=1)
    assert torch.allclose(val, ref_val, atol=1e-5)
    assert recall(pos, ref_pos) == 1.0


def test_few_lists_probed_keep_most_of_the_top_k():
    E, q = clustered(), clustered(n=64, seed=2)
    ref = (q @ E.T).topk(20, dim=1).indices
    r8 = recall(searched(E, q, top=20, nlist=64, nprobe=8)[0], ref)
    r1 = recall(searched(E, q, top=20, nlist=64, nprobe=1)[0], ref)
    assert r8 > 0.9
    assert r1 < r8  # fewer probes, fewer true neighbours: the index is really approximate


def test_fewer_candidates_than_top_are_padded_with_minus_inf():
    E, q = clustered(n=200), clustered(n=16, seed=3)
    f = IVFPrefilter(top=150, nlist=20, nprobe=2, seed=0)  # 2 lists of ~10 rows each < 150
    f.build(lambda p: E[p], len(E), step=0)
    pos, val = f.search(q, lambda p: E[p])
    probe = (q @ f.centroids.T).topk(2, dim=1).indices
    for i in range(len(q)):
        members = torch.cat([f.order[f.offsets[l]:f.offsets[l + 1]] for l in probe[i].tolist()])
        real = ~torch.isinf(val[i])
        assert int(real.sum()) == len(members) < 150
        assert set(pos[i][real].tolist()) == set(members.tolist())
        assert torch.allclose(val[i][real], (E[pos[i][real]] @ q[i]))


def test_cache_draws_follow_the_truncated_softmax():
    n, d, top = 300, 8, 12
    E = torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(0)), dim=-1)
    store, model = make_store(E, fill=False)
    s = CacheSampler(1, prefilter_top=top, prefilter_nlist=10, prefilter_nprobe=10, seed=0)
    s.setup(store, model, 0, encode=encoder(store, model))
    q, pos = E[:1] * 1.0, torch.tensor([0])
    scale = 4.0
    counts = {}
    for step in range(6000):
        draw = s.sample(q, batch(E, pos, step=step, scale=scale), store)
        j = int(draw.ids[0, 0])
        counts[j] = counts.get(j, 0) + 1
    cand = (q @ E.T)[0].topk(top).indices.tolist()
    cand = [c for c in cand if c != 0]  # the positive is excluded, its slot is not refilled
    assert set(counts) <= set(cand)
    logits = (q @ E[cand].T)[0] * scale
    p = logits.double().softmax(-1).numpy()
    obs = np.array([counts.get(c, 0) for c in cand])
    assert chisquare(obs, p * obs.sum()).pvalue > 0.01
    # and with one draw and no (k+1)-th key beyond the candidates, pi is that of the truncated softmax:
    # pi_j = 1 - exp(-exp(l_j - kappa)); check the weighted estimate of Z over the candidates is unbiased
    est = []
    for step in range(3000):
        draw = s.sample(q, batch(E, pos, step=10_000 + step, scale=scale), store)
        j = cand.index(int(draw.ids[0, 0]))
        est.append(math.exp(float(logits[j]) - float(draw.log_pi[0, 0])))
    z = float(logits.exp().sum())
    assert abs(np.mean(est) - z) < 4 * np.std(est) / math.sqrt(len(est))


def test_prefilter_state_round_trip_and_rebuild_schedule():
    E = clustered(n=1000)
    f = IVFPrefilter(top=10, nlist=16, nprobe=2, rebuild_every=5, seed=3)
    f.maybe_rebuild(lambda p: E[p], len(E), step=0)
    assert f.built_step == 0
    f.maybe_rebuild(lambda p: E[p], len(E), step=4)
    assert f.built_step == 0
    g = IVFPrefilter(top=10, nlist=16, nprobe=2, rebuild_every=5, seed=3)
    g.load_state(f.state("p"), "p")
    q = clustered(n=8, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(f.search(q, lambda p: E[p]), g.search(q, lambda p: E[p])))
    f.maybe_rebuild(lambda p: E[p], len(E), step=5)
    assert f.built_step == 5
