"""With a fresh cache, the surrogate's gradient is unbiased for the exact full-softmax gradient; the
corrected sampled softmax (cache, uniform) gets closer to it as the number of negatives grows."""

import numpy as np
import pytest
import torch
from samplerkit import batch, make_store, unit

from negminer.diagnostics import exact_gradient, sampler_gradient
from negminer.samplers import CacheSampler, UniformSampler


def setup(n=200, d=16, b=6, seed=0):
    E, q = unit(n, d, seed), unit(b, d, seed + 100)
    store, _ = make_store(E)
    return E, q, torch.arange(b) * 7, store


def cache(k, **kw):
    s = CacheSampler(k, **kw)
    s.rows, s.full = torch.arange(200), True
    return s


def mean_gradient(sampler, E, q, pos, store, reps, loss="softmax"):
    grads = []
    for r in range(reps):
        b = batch(E, pos, step=r, scale=5.0)
        draw = sampler.sample(q, b, store)
        grads.append(sampler_gradient(q, E, b, draw, b.loss_scale, False, loss))
    return torch.stack(grads)


def test_cache_surrogate_gradient_is_unbiased_with_fresh_cache():
    E, q, pos, store = setup()
    s = cache(32, replacement=True)
    s.want_log_z = True
    g_star = exact_gradient(q, E, pos, batch(E, pos, scale=5.0).excl, 5.0)
    g = mean_gradient(s, E, q, pos, store, 400, loss="cache-surrogate").mean(0)
    assert float((g - g_star).norm() / g_star.norm()) < 0.03
    # a biased proposal (sampling temperature 4x too hot) is detected by the same test
    hot = cache(32, replacement=True, sample_temperature=0.05)
    hot.want_log_z = True
    g_hot = mean_gradient(hot, E, q, pos, store, 100, loss="cache-surrogate").mean(0)
    assert float((g_hot - g_star).norm() / g_star.norm()) > 0.2


@pytest.mark.parametrize("kind", ["cache", "uniform"])
def test_corrected_sampled_softmax_approaches_exact_gradient_with_more_negatives(kind):
    E, q, pos, store = setup(seed=1)
    g_star = exact_gradient(q, E, pos, batch(E, pos, scale=5.0).excl, 5.0)
    errors = []
    for k in (2, 8, 32, 128):
        s = cache(k) if kind == "cache" else UniformSampler(k)
        g = mean_gradient(s, E, q, pos, store, 30)
        errors.append(float(((g - g_star).norm(dim=(1, 2)) / g_star.norm()).mean()))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.5 * errors[0], errors
    assert np.isfinite(errors).all()
