"""Gumbel-Max draws follow the softmax, also when streamed over chunks; inclusion probabilities make
the Horvitz-Thompson estimate of the partition function unbiased; draws with replacement follow
k q; the compiled kernel and the torch ops give the same draws."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from negminer.samplers import kernel
from negminer.samplers.gumbel import ReplacementStream, TopKStream, gumbel_topk


def streamed(logits, k, g, chunk=7, replacement=False, stride=3):
    b, m = logits.shape
    acc = ReplacementStream(b, k, g, scale=1.0) if replacement else TopKStream(b, k, g, stride=stride)
    for s in range(0, m, chunk):
        acc.add(logits[:, s:s + chunk].clone(), s, 1.0)
    return acc


def test_gumbel_max_follows_softmax_chi_square():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0, 1.5, 0.2]])
    p = logits.double().softmax(-1)[0].numpy()
    g = torch.Generator().manual_seed(0)
    n = 10_000
    draws = torch.cat([gumbel_topk(logits.expand(1000, -1), 1, g) for _ in range(n // 1000)]).flatten().numpy()
    counts = np.bincount(draws, minlength=8)
    assert chisquare(counts, p / p.sum() * n).pvalue > 0.01
    assert chisquare(counts, np.full(8, n / 8)).pvalue < 1e-6  # the test has power


def test_streamed_first_draw_follows_softmax_in_every_row():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 30, generator=g) * 1.5
    counts = torch.zeros(4, 30)
    for _ in range(6000):
        pos, _, _ = streamed(logits, 3, g).result()
        counts[torch.arange(4), pos[:, 0]] += 1
    p = logits.double().softmax(-1).numpy()
    for i in range(4):
        assert chisquare(counts[i].numpy(), p[i] * counts[i].sum().item()).pvalue > 0.001, i


def test_streamed_topk_matches_ordered_pair_probabilities():
    logits = torch.tensor([[1.0, 0.0, -0.5, 0.7]] * 2)
    p = logits[0].double().softmax(-1).numpy()
    g = torch.Generator().manual_seed(2)
    pairs = list(itertools.permutations(range(4), 2))
    seen = {pr: 0 for pr in pairs}
    n = 20_000
    for _ in range(n // 2):
        pos, _, _ = streamed(logits, 2, g, chunk=3).result()
        for a, b in pos.tolist():
            assert a != b  # without replacement
            seen[(a, b)] += 1
    exact = np.array([p[i] * p[j] / (1 - p[i]) for i, j in pairs])
    assert chisquare(np.array([seen[pr] for pr in pairs]), exact / exact.sum() * n).pvalue > 0.01


@pytest.mark.parametrize("replacement", [False, True], ids=["inclusion", "with-replacement"])
def test_weighted_estimate_of_the_partition_function_is_unbiased(replacement):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 50, generator=g) * 2.0
    f = logits + torch.randn(3, 50, generator=g)  # estimate sum_j exp(f_j) with draws from softmax(logits)
    z = f.exp().sum(1)
    est = []
    for _ in range(4000):
        pos, log_pi, mask = streamed(logits, 5, g, chunk=16, replacement=replacement).result()
        est.append((f.gather(1, pos) - log_pi).exp().masked_fill(mask, 0).sum(1))
    est = torch.stack(est)
    se = est.std(0) / math.sqrt(len(est))
    assert ((est.mean(0) - z).abs() < 4 * se).all(), (est.mean(0) / z, se / z)


def test_old_k_q_weight_is_biased_without_replacement():
    g = torch.Generator().manual_seed(4)
    logits = torch.tensor([[4.0, 2.0, 1.0] + [0.0] * 20])
    z = float(logits.exp().sum())
    est = []
    for _ in range(4000):
        pos, _, _ = streamed(logits, 4, g).result()
        log_kq = math.log(4) + logits.log_softmax(-1).gather(1, pos)
        est.append(float((logits.gather(1, pos) - log_kq).exp().sum()))
    assert abs(np.mean(est) / z - 1) > 20 * np.std(est) / math.sqrt(len(est)) / z


def test_inclusion_of_a_candidate_from_two_pools():
    """A target that another pool (the batch, expected count c) may also contain: with pi taken at the
    k-th key when it was not drawn and at kappa when it was, E[(N_pool + 1{drawn}) / (c + pi)] = 1."""
    g = torch.Generator().manual_seed(5)
    logits = torch.tensor([[1.5, 1.0, 0.5, 0.0, -0.5, -1.0]])
    j, c = 1, 0.4
    rng = np.random.default_rng(0)
    right, wrong = [], []
    for _ in range(20_000):
        acc = streamed(logits, 2, g, chunk=4)
        pos, _, mask = acc.result()
        drawn = torch.tensor([[bool((pos[0] == j).any())]])
        lj = logits[:, j:j + 1]
        n_pool = float(rng.random() < c)
        right.append((n_pool + float(drawn)) / (c + float(acc.log_pi_of(lj, drawn).exp())))
        wrong.append((n_pool + float(drawn)) / (c + float(acc.log_pi_of(lj, torch.ones_like(drawn)).exp())))
    se = np.std(right) / math.sqrt(len(right))
    assert abs(np.mean(right) - 1) < 4 * se, np.mean(right)
    assert abs(np.mean(wrong) - 1) > 8 * se, np.mean(wrong)


def test_with_replacement_counts_follow_k_q_and_log_z_is_exact():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 40, generator=g)
    counts = torch.zeros(2, 40)
    for _ in range(3000):
        acc = streamed(logits, 4, g, chunk=9, replacement=True)
        pos, log_pi, _ = acc.result()
        counts.scatter_add_(1, pos, torch.ones_like(pos, dtype=torch.float))
    assert torch.allclose(acc.log_z[1.0], logits.logsumexp(1), atol=1e-5)
    p = logits.double().softmax(-1).numpy()
    for i in range(2):
        assert chisquare(counts[i].numpy(), p[i] * counts[i].sum().item()).pvalue > 0.001


def test_masked_entries_never_drawn_and_short_rows_masked_per_row():
    g = torch.Generator().manual_seed(7)
    logits = torch.zeros(2, 10)
    logits[0, 3:] = -math.inf  # row 0: only 3 usable candidates, row 1: ten
    for _ in range(200):
        pos, log_pi, mask = streamed(logits, 5, g, chunk=4).result()
        assert mask[0].tolist() == [False] * 3 + [True] * 2 and not mask[1].any()
        assert set(pos[0, :3].tolist()) == {0, 1, 2}
        assert torch.allclose(log_pi[0, :3], torch.zeros(3))  # all usable drawn: pi = 1
        assert len(set(pos[1].tolist())) == 5


def assert_same_on_3_and_1_threads(run):
    """``run()`` gives equal tensors on 3 threads (uneven parts) and on 1."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        a = run()
        torch.set_num_threads(1)
        b = run()
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.skipif(kernel.get() is None, reason=f"no compiled kernel here: {kernel.status()}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_and_torch_ops_give_the_same_draws(monkeypatch, dtype):
    scores = torch.randn(16, 1000, generator=torch.Generator().manual_seed(8)).to(dtype)

    g = torch.Generator().manual_seed(10)
    # excluded (query, position) pairs, by position: each query's best score (else surely drawn) and some others
    q = torch.cat([torch.arange(16), torch.randint(16, (24,), generator=g)])
    p = torch.cat([scores.float().argmax(1), torch.randint(1000, (24,), generator=g)])
    o = p.argsort()
    excl, ex = (q[o], p[o]), p[o]
    wp = torch.randint(1000, (30,), generator=g).sort().values  # watched pairs
    watch = (torch.randint(16, (30,), generator=g), wp)

    def run():
        acc = TopKStream(16, 6, torch.Generator().manual_seed(9), stride=5, watch=watch)
        for s in range(0, 1000, 300):
            acc.watch_span = torch.searchsorted(wp, torch.tensor([s, s + 300])).tolist()
            lo, hi = torch.searchsorted(ex, torch.tensor([s, s + 300])).tolist()
            acc.add(scores[:, s:s + 300].clone(), s, 20.0, pairs=(excl[0][lo:hi], excl[1][lo:hi]))
        return (*acc.result(), acc.watched)

    monkeypatch.setattr(kernel, "gumbel", lambda n, g: None)  # the same (torch) noise for both top-k paths
    a = run()
    drawn = {(q, int(p)) for q in range(16) for p in a[0][q]}
    assert not drawn & set(zip(excl[0].tolist(), excl[1].tolist()))  # excluded pairs never drawn
    assert torch.equal(a[3], scores[watch[0], watch[1]].float() * 20.0)
    monkeypatch.setattr(kernel, "get", lambda: None)
    b = run()
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) and torch.allclose(a[1], b[1]) and torch.equal(a[3], b[3])


@pytest.mark.skipif(kernel.get() is None, reason=f"no compiled kernel here: {kernel.status()}")
def test_kernel_noise_is_gumbel_and_a_function_of_the_seed():
    from scipy.stats import kstest

    x = kernel.gumbel(400_000, torch.Generator().manual_seed(0))
    assert kstest(x.numpy(), "gumbel_r").pvalue > 0.01
    assert kstest(x.numpy() + 0.05, "gumbel_r").pvalue < 1e-6  # the test has power
    assert abs(float(x.mean()) - 0.5772) < 0.01 and abs(float(x.var()) - math.pi**2 / 6) < 0.02
    same = [kernel.gumbel(1000, torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(*same) and not torch.equal(same[0], kernel.gumbel(1000, torch.Generator().manual_seed(4)))


@pytest.mark.skipif(kernel.get() is None, reason=f"no compiled kernel here: {kernel.status()}")
def test_kernel_gives_the_same_draws_and_noise_on_any_number_of_threads():
    scores = torch.randn(64, 9000, generator=torch.Generator().manual_seed(10)).to(torch.bfloat16)

    def run():  # 64 x 4,096 per chunk and 300,001 noise values: large enough to be split over threads
        acc = TopKStream(64, 8, torch.Generator().manual_seed(11))
        acc.pass_noise(0, 9000)
        for s in range(0, 9000, 4096):
            acc.add(scores[:, s:s + 4096].clone(), s, 20.0)
        return (*acc.result(), kernel.gumbel(300_001, torch.Generator().manual_seed(12)))

    assert_same_on_3_and_1_threads(run)


@pytest.mark.skipif(kernel.get() is None, reason=f"no compiled kernel here: {kernel.status()}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_softmax_pass_draws_follow_k_q_with_exclusions_and_exact_log_z(dtype):
    """The fused softmax pass (draws with replacement, log Z at a second scale for the loss): uneven chunks,
    excluded pairs (a query's best row among them), a row whose only mass sits in one chunk, watched pairs
    recorded before the exclusions; counts follow softmax, log Z equals logsumexp over what is left."""
    g = torch.Generator().manual_seed(20)
    b, m, k = 4, 203, 3
    scores = (torch.randn(b, m, generator=g) * 0.2).to(dtype)
    scores[3, :150] = -math.inf                         # row 3: all its mass in the last chunk(s)
    ex_q = torch.tensor([0, 1, 2, 0, 2])
    ex_p = torch.cat([scores[:3].float().argmax(1), torch.tensor([60, 61])])
    o = ex_p.argsort()
    ex_q, ex_p = ex_q[o], ex_p[o]
    watch = (torch.tensor([0, 1, 0]), torch.tensor([5, 70, 71]))
    allowed = scores.float().clone()
    allowed[ex_q, ex_p] = -math.inf
    counts = torch.zeros(b, m)
    for r in range(1500):
        acc = ReplacementStream(b, k, torch.Generator().manual_seed(r), scale=10.0, log_z_scales=(20.0,), watch=watch)
        for s in range(0, m, 64):
            lo, hi = torch.searchsorted(ex_p, torch.tensor([s, s + 64])).tolist()
            acc.add(scores[:, s:s + 64].clone(), s, 10.0, pairs=(ex_q[lo:hi], ex_p[lo:hi]))
        pos, log_pi, mask = acc.result()
        assert acc.seed is not None and not mask.any()  # the kernel path ran
        counts.scatter_add_(1, pos, torch.ones_like(pos, dtype=torch.float))
    assert counts[ex_q, ex_p].sum() == 0 and counts[3, :150].sum() == 0
    assert torch.allclose(acc.log_z[10.0], (allowed * 10).logsumexp(1), atol=2e-5)
    assert torch.allclose(acc.log_z[20.0], (allowed * 20).logsumexp(1), atol=2e-5)
    assert torch.allclose(log_pi, math.log(k) + allowed.gather(1, pos) * 10 - acc.log_z[10.0].unsqueeze(1), atol=1e-4)
    assert torch.equal(acc.watched, scores[watch[0], watch[1]].float() * 10)
    def pvalue(c, p):  # chi-square with the cells expected below 5 pooled into one
        e = p * c.sum()
        small = e < 5
        return chisquare(np.append(c[~small], c[small].sum()), np.append(e[~small], e[small].sum())).pvalue

    p = (allowed * 10).double().softmax(-1).numpy()
    for i in range(b):
        assert pvalue(counts[i].numpy(), p[i]) > 0.001, i
    # power: the same counts against a softmax at another temperature are rejected
    assert pvalue(counts[0].numpy(), (allowed[0] * 8).double().softmax(-1).numpy()) < 1e-6


@pytest.mark.skipif(kernel.get() is None, reason=f"no compiled kernel here: {kernel.status()}")
def test_kernel_log_z_mode_of_the_top_k_pass_matches_torch(monkeypatch):
    """The top-k pass asked for log Z (the log-Z loss): the kernel's running log Z equals the torch ops'."""
    scores = torch.randn(64, 9000, generator=torch.Generator().manual_seed(21)).to(torch.bfloat16)

    def run():
        acc = TopKStream(64, 8, torch.Generator().manual_seed(22), log_z_scales=(20.0, 5.0))
        for s in range(0, 9000, 4096):  # 64 x 4,096: split over threads
            acc.add(scores[:, s:s + 4096].clone(), s, 20.0)
        return acc.log_z

    a = run()
    monkeypatch.setattr(kernel, "get", lambda: None)
    b = run()
    for s in (20.0, 5.0):
        assert torch.allclose(a[s], b[s], atol=1e-4) and torch.allclose(a[s], (scores.float() * s).logsumexp(1), atol=1e-4)


@pytest.mark.skipif(kernel.get() is None, reason=f"no compiled kernel here: {kernel.status()}")
def test_kernel_draws_with_replacement_do_not_depend_on_the_threads():
    scores = torch.randn(64, 9000, generator=torch.Generator().manual_seed(23)).to(torch.bfloat16)

    def run():
        acc = ReplacementStream(64, 16, torch.Generator().manual_seed(24), scale=20.0)
        for s in range(0, 9000, 4096):
            acc.add(scores[:, s:s + 4096].clone(), s)
        return acc.result()

    assert_same_on_3_and_1_threads(run)
