"""Gumbel-Max draws follow the softmax; Gumbel-top-k is sampling without replacement."""

import itertools

import numpy as np
import torch
from scipy.stats import chisquare

from negminer.samplers.gumbel import gumbel_topk


def test_gumbel_max_follows_softmax_chi_square():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0, 1.5, 0.2]])
    p = logits.double().softmax(-1)[0].numpy()
    g = torch.Generator().manual_seed(0)
    n = 10_000
    draws = torch.cat([gumbel_topk(logits.expand(1000, -1), 1, g) for _ in range(n // 1000)]).flatten().numpy()
    counts = np.bincount(draws, minlength=8)
    assert chisquare(counts, p / p.sum() * n).pvalue > 0.01
    # and the test has power: a wrong distribution is rejected
    assert chisquare(counts, np.full(8, n / 8)).pvalue < 1e-6


def test_gumbel_topk_matches_ordered_pair_probabilities():
    logits = torch.tensor([1.0, 0.0, -0.5, 0.7])
    p = logits.double().softmax(-1).numpy()
    g = torch.Generator().manual_seed(1)
    n = 40_000
    draws = gumbel_topk(logits.expand(n, -1), 2, g).numpy()
    assert all(a != b for a, b in draws[:1000])  # without replacement
    pairs = list(itertools.permutations(range(4), 2))
    exact = np.array([p[i] * p[j] / (1 - p[i]) for i, j in pairs])
    seen = {pr: 0 for pr in pairs}
    for a, b in draws:
        seen[(int(a), int(b))] += 1
    counts = np.array([seen[pr] for pr in pairs])
    assert abs(exact.sum() - 1) < 1e-6
    assert chisquare(counts, exact / exact.sum() * n).pvalue > 0.01


def test_masked_entries_never_drawn_and_replacement_repeats():
    logits = torch.tensor([[0.0, float("-inf"), 0.0, float("-inf")]]).expand(500, -1)
    g = torch.Generator().manual_seed(2)
    d = gumbel_topk(logits, 2, g)
    assert set(d.flatten().tolist()) == {0, 2}
    r = gumbel_topk(torch.zeros(200, 3), 3, g, replacement=True)
    assert (r[:, 0] == r[:, 1]).any()
