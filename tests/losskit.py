"""Random inputs for the multi-positive losses' reference tests."""

import math

import torch


def make_inputs(seed, b=5, m=6, k=4, d=8, dtype=torch.float64):
    """Random scores with every kind of column: masked pool columns, extra positives (``pool_pos``,
    which the trainer also masks), weights, masked drawn negatives; query 0 has no usable drawn
    negative, query 1 no negative at all."""
    g = torch.Generator().manual_seed(seed)
    q, pos = torch.randn(b, d, generator=g, dtype=dtype), torch.randn(b, d, generator=g, dtype=dtype)
    pool, neg = torch.randn(m, d, generator=g, dtype=dtype), torch.randn(b, k, d, generator=g, dtype=dtype)
    pool_pos = torch.rand(b, m, generator=g) < 0.25
    pool_mask = (torch.rand(b, m, generator=g) < 0.3) | pool_pos
    neg_mask = torch.rand(b, k, generator=g) < 0.3
    neg_mask[0] = True
    pool_mask[1], neg_mask[1] = True, True
    pool_log_pi = torch.log(torch.rand(b, m, generator=g, dtype=dtype) * 2 + 0.05)
    neg_log_pi = torch.log(torch.rand(b, k, generator=g, dtype=dtype) * 2 + 0.05)
    return {"q": q, "pos": pos, "pool": pool, "pool_mask": pool_mask, "pool_log_pi": pool_log_pi, "neg": neg,
            "neg_mask": neg_mask, "neg_log_pi": neg_log_pi, "pool_pos": pool_pos}


def poison_masked(inp: dict) -> None:
    """Put inf, -inf and nan in the corrections of masked (unusable) columns, in place."""
    for name, mask in (("pool_log_pi", "pool_mask"), ("neg_log_pi", "neg_mask")):
        lp = inp[name].clone()
        flat = lp[inp[mask]]
        flat[0::3], flat[1::3], flat[2::3] = math.inf, -math.inf, math.nan
        lp[inp[mask]] = flat
        inp[name] = lp
