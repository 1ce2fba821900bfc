"""With a fresh cache, the surrogate's gradient is unbiased for the exact full-softmax gradient; the
corrected sampled softmax (cache, uniform) gets closer to it as the number of negatives grows."""

import numpy as np
import pytest
import torch

from negminer.diagnostics import exact_gradient, sampler_gradient
from negminer.samplers import Batch, CacheSampler, UniformSampler
from negminer.store import TargetStore


def setup(n=200, d=16, b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    E = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)
    q = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=-1)
    pos = torch.arange(b) * 7
    store = TargetStore([str(i) for i in range(n)], [""] * n, d)
    store.write(range(n), E, 0)
    return E, q, pos, store


def batch(E, pos, seed, scale=5.0):
    return Batch(0, pos, [{int(r)} for r in pos], E[pos], torch.Generator().manual_seed(seed), scale)


def mean_gradient(sampler, E, q, pos, store, reps, loss="softmax", inbatch=False):
    grads = []
    for r in range(reps):
        b = batch(E, pos, r)
        draw = sampler.sample(q, b, store)
        grads.append(sampler_gradient(q, E, b, draw, b.loss_scale, inbatch, loss))
    return torch.stack(grads)


def test_cache_surrogate_gradient_is_unbiased_with_fresh_cache():
    E, q, pos, store = setup()
    s = CacheSampler(32, replacement=True)
    s.rows = torch.arange(len(E))
    g_star = exact_gradient(q, E, pos, [{int(r)} for r in pos], 5.0)
    g = mean_gradient(s, E, q, pos, store, 400, loss="cache-surrogate").mean(0)
    rel = float((g - g_star).norm() / g_star.norm())
    assert rel < 0.03, rel
    # a biased proposal (sampling temperature 4x too hot) is detected by the same test
    hot = CacheSampler(32, replacement=True, sample_temperature=0.05)
    hot.rows = torch.arange(len(E))
    g_hot = mean_gradient(hot, E, q, pos, store, 100, loss="cache-surrogate").mean(0)
    assert float((g_hot - g_star).norm() / g_star.norm()) > 0.2


@pytest.mark.parametrize("kind", ["cache", "uniform"])
def test_corrected_sampled_softmax_approaches_exact_gradient_with_more_negatives(kind):
    E, q, pos, store = setup(seed=1)
    g_star = exact_gradient(q, E, pos, [{int(r)} for r in pos], 5.0)
    errors = []
    for k in (2, 8, 32, 128):
        s = CacheSampler(k, replacement=True) if kind == "cache" else UniformSampler(k)
        if kind == "cache":
            s.rows = torch.arange(len(E))
        g = mean_gradient(s, E, q, pos, store, 30)
        errors.append(float(((g - g_star).norm(dim=(1, 2)) / g_star.norm()).mean()))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.5 * errors[0], errors
    assert np.isfinite(errors).all()
