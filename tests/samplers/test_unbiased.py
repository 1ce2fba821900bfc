"""The corrected sampled softmax estimates the full softmax: inclusion probabilities for draws
without replacement, k q with replacement, and the mixture of in-batch and sampled negatives.

Statistic: T = ||mean_r g_r - g*||^2 / (sum of per-coordinate variances / R), the squared error of
the mean gradient over R independent draws in units of its expected squared standard error; it is
about 1 when the estimate is unbiased and grows with R when it is not."""

import math

import numpy as np
import pytest
import torch
from samplerkit import batch, make_store, unit

from negminer.batching import RandomBatcher
from negminer.diagnostics import exact_gradient
from negminer.losses import SoftmaxLoss
from negminer.pipeline import loss_inputs
from negminer.samplers import Batch, CacheSampler, Exclusions, TreeSampler

N, D = 400, 16


def full_cache(k, replacement):
    s = CacheSampler(k, replacement=replacement)
    s.rows, s.full = torch.arange(N), True
    return s


def tree(k, replacement):
    return TreeSampler(k, beam=2, branching=4, leaf_size=16, fallback=0)  # rejection, never the exact pass


def gradient_T(scale, replacement, reps=3000, k=8, b=6, old=False, seed=0, make=full_cache):
    """T of the sampled-softmax gradient w.r.t. q (no in-batch), proposal = the exact softmax."""
    E, q = unit(N, D, seed), unit(b, D, seed + 1)
    store, model = make_store(E)
    s, loss, pos = make(k, replacement), SoftmaxLoss(), torch.arange(b) * 7
    if make is tree:
        s.setup(store, model, 0)
    grads = []
    for r in range(reps):
        bt = batch(E, pos, step=r, scale=scale)
        draw = s.sample(q, bt, store)
        if old:  # the weight before the fix: k q_j for every draw
            lg = (q @ E.T * scale).masked_fill(bt.excl.dense(None), -math.inf).log_softmax(-1)
            draw.log_pi = math.log(k) + lg.gather(1, draw.ids)
        qq = q.clone().requires_grad_(True)
        loss(**loss_inputs(loss, qq, E[pos], scale, bt, draw, E[draw.ids], inbatch=False)).backward()
        grads.append(qq.grad)
    g = torch.stack(grads)
    g_star = exact_gradient(q, E, pos, bt.excl, scale)
    peak = float((q @ E.T * scale).masked_fill(bt.excl.dense(None), -math.inf).softmax(-1).max(1).values.mean())
    return float(((g.mean(0) - g_star) ** 2).sum() / (g.var(0).sum() / reps)), peak


@pytest.mark.parametrize("replacement", [False, True], ids=["without", "with"])
@pytest.mark.parametrize("scale", [4.0, 30.0], ids=["flat", "peaked"])
def test_corrected_gradient_is_unbiased(scale, replacement):
    t, peak = gradient_T(scale, replacement)
    assert (peak < 0.05) if scale == 4.0 else (peak > 0.4), peak
    assert t < 4.0, t


@pytest.mark.parametrize("scale", [4.0, 30.0], ids=["flat", "peaked"])
def test_tree_sampler_gradient_is_unbiased(scale):
    t, _ = gradient_T(scale, True, reps=1500, make=tree)  # exact draws, Z estimated: still unbiased
    assert t < 4.0, t


def test_old_k_q_weighting_is_rejected_on_a_peaked_softmax():
    t, _ = gradient_T(30.0, False, old=True)
    assert t > 100, t


# ---- in-batch and sampled negatives together ------------------------------------------------

def skewed_batches(k, b, scale, reps, seed, n, replacement=False):
    """Query 0 with B - 1 random other training queries (skewed positives: popular targets), k draws
    per query from the exact softmax. Returns E, Q, the batcher, the exact Z and gradient of query 0,
    and an iterator of (idx, positives, batch, draw), one per repetition."""
    E = unit(300, D, seed)
    g = torch.Generator().manual_seed(seed + 5)
    popular = torch.multinomial(torch.linspace(3, 0.1, 100), n, replacement=True, generator=g)  # skewed
    pos_lists = [[int(p)] for p in popular]
    batcher = RandomBatcher(n, b, 0, pos_lists, 300)
    Q = unit(n, D, seed + 1)
    store, _ = make_store(E)
    s = CacheSampler(k, replacement=replacement)
    s.rows, s.full = torch.arange(300), True
    ex = Exclusions([{pos_lists[0][0]}], 300)
    z_true = float((Q[0] @ E.T * scale).masked_fill(ex.dense(None)[0], -math.inf).exp().sum())
    g_star = exact_gradient(Q[:1], E, torch.tensor([pos_lists[0][0]]), ex, scale)[0]

    def draws():
        rng = np.random.default_rng(seed)
        for r in range(reps):
            idx = np.concatenate([[0], rng.choice(np.arange(1, n), b - 1, replace=False)])
            pos = torch.tensor([pos_lists[i][0] for i in idx])
            ex = Exclusions([{int(p)} for p in pos], 300)
            bt = Batch(r, pos, ex, E[pos], torch.Generator().manual_seed(r), scale, positives=ex)
            yield idx, pos, bt, s.sample(Q[idx], bt, store)
    return E, Q, batcher, z_true, g_star, draws()


def mixture_run(mode, k, b, scale=20.0, reps=3000, seed=0, n=120):
    """Query 0 with B - 1 random other training queries (their positives are the in-batch pool) and k
    draws from the exact softmax; returns per-draw (Z estimate, gradient) and the exact values."""
    E, Q, batcher, z_true, g_star, draws = skewed_batches(k, b, scale, reps, seed, n)
    loss = SoftmaxLoss()
    zs, grads = [], []
    for idx, pos, bt, draw in draws:
        qq = Q[idx].clone().requires_grad_(True)
        kw = loss_inputs(loss, qq, E[pos], scale, bt, draw, E[draw.ids], True,
                         batcher.log_batch_count if mode == "mixture" else None)
        if mode == "old":  # in-batch logits uncorrected, drawn ones corrected: the pool counted twice
            kw.pop("pool_log_pi", None)
        loss(**kw).backward()
        grads.append(qq.grad[0] * b)
        with torch.no_grad():
            lp = (Q[0] @ E[pos].T * scale - kw.get("pool_log_pi", torch.zeros(b, b))[0]).masked_fill(kw["pool_mask"][0], -math.inf)
            ln = (Q[0] @ E[draw.ids[0]].T * scale - kw["neg_log_pi"][0]).masked_fill(kw["neg_mask"][0], -math.inf)
            zs.append(float(lp.exp().sum() + ln.exp().sum()))
    return np.array(zs), torch.stack(grads), z_true, g_star


def test_mixture_estimates_the_partition_function_once():
    z, _, z_true, _ = mixture_run("mixture", k=8, b=16)
    se = z.std() / math.sqrt(len(z))
    assert abs(z.mean() - z_true) < 4 * se, (z.mean() / z_true, se / z_true)
    z_old, _, _, _ = mixture_run("old", k=8, b=16)
    assert z_old.mean() - z_true > 10 * z_old.std() / math.sqrt(len(z_old)), z_old.mean() / z_true


def test_mixture_gradient_is_unbiased():
    _, g, _, g_star = mixture_run("mixture", k=16, b=16)
    t = float(((g.mean(0) - g_star) ** 2).sum() / (g.var(0).sum() / len(g)))
    assert t < 4.0, t


# ---- shared negatives: every query scores every query's draws -------------------------------

def shared_run(mode, k=4, b=8, replacement=False, inbatch=True, scale=20.0, reps=2000, seed=0, n=120):
    """As mixture_run, with --share-negatives: query 0's pool is the batch's positives and all B x k
    draws. mode 'shared': one correction per candidate (sum of every query's pi); 'owner': each draw
    corrected by its own query's pi only (the naive pooling)."""
    E, Q, batcher, z_true, g_star, draws = skewed_batches(k, b, scale, reps, seed, n, replacement)
    loss = SoftmaxLoss()
    zs, grads = [], []
    for idx, pos, bt, draw in draws:
        if mode == "owner":
            draw.cross = lambda rows, lp=draw.log_pi: torch.full((b, len(rows)), -math.inf).index_put_(
                (torch.arange(b).repeat_interleave(k), torch.arange(b * k)), lp.reshape(-1))
        qq = Q[idx].clone().requires_grad_(True)
        kw = loss_inputs(loss, qq, E[pos], scale, bt, draw, E[draw.ids], inbatch,
                         batcher.log_batch_count if inbatch else None, share=True)
        loss(**kw).backward()
        grads.append(qq.grad[0] * b)
        with torch.no_grad():
            lz = (Q[0] @ kw["pool"].T * scale - kw["pool_log_pi"][0]).masked_fill(kw["pool_mask"][0], -math.inf)
            zs.append(float(lz.exp().sum()))
    return np.array(zs), torch.stack(grads), z_true, g_star


@pytest.mark.parametrize("replacement,inbatch", [(False, True), (False, False), (True, True)],
                         ids=["without+inbatch", "without", "with+inbatch"])
def test_shared_negatives_estimate_the_partition_function_and_gradient(replacement, inbatch):
    z, g, z_true, g_star = shared_run("shared", replacement=replacement, inbatch=inbatch)
    se = z.std() / math.sqrt(len(z))
    assert abs(z.mean() - z_true) < 4 * se, (z.mean() / z_true, se / z_true)
    t = float(((g.mean(0) - g_star) ** 2).sum() / (g.var(0).sum() / len(g)))
    assert t < 4.0, t


def test_shared_negatives_owner_correction_is_rejected():
    z, _, z_true, _ = shared_run("owner", inbatch=False, scale=4.0)
    assert z.mean() - z_true > 10 * z.std() / math.sqrt(len(z)), z.mean() / z_true
