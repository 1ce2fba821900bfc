"""Every random part draws from its own generator, derived from (run seed, step, part name), so that two
parts never share a stream (with --seed 0, seeds like seed * 7919 + step made the fraction refresher and
Nystrom pick the same rows) and a resumed run redraws exactly what an uninterrupted one would.

    g = rng.generator(cfg.seed, step, "nystrom")      # a torch.Generator for this part at this step
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


def seed_of(seed: int, step: int, part: str) -> int:
    """A 63-bit seed, a function of (seed, step, part) only (SeedSequence hashing: no two triples collide in practice)."""
    ss = np.random.SeedSequence([int(seed), int(step), zlib.crc32(part.encode())])
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


def generator(seed: int, step: int, part: str, device=None) -> torch.Generator:
    g = torch.Generator(device=device) if device is not None else torch.Generator()
    return g.manual_seed(seed_of(seed, step, part))
