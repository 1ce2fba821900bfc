"""Gumbel-Max sampling from a softmax given by logits.

Gumbel (1954); Maddison et al., "A* Sampling", NeurIPS 2014; Kool et al., "Stochastic Beams and
Where to Find Them", ICML 2019 (Gumbel-top-k = sampling without replacement).

    argmax_i (l_i + G_i), G_i ~ Gumbel(0, 1) i.i.d.   ~   softmax(l)
    top-k_i (l_i + G_i)                              ~   k draws without replacement, in order

Example::

    g = torch.Generator().manual_seed(0)
    ids = gumbel_topk(logits, k=8, generator=g)                    # without replacement
    ids = gumbel_topk(logits, k=8, generator=g, replacement=True)  # k independent draws
"""

from __future__ import annotations

import torch


def gumbel_noise(shape, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, device=device).clamp_(1e-20, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def gumbel_topk(logits: torch.Tensor, k: int, generator: torch.Generator | None = None,
                replacement: bool = False) -> torch.Tensor:
    """Indices [B, k] drawn from softmax(logits [B, M]); -inf logits are never drawn (if enough finite)."""
    if not replacement:
        return (logits + gumbel_noise(logits.shape, generator, logits.device)).topk(k, dim=-1).indices
    draws = [(logits + gumbel_noise(logits.shape, generator, logits.device)).argmax(-1) for _ in range(k)]
    return torch.stack(draws, dim=-1)
