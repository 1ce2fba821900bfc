"""Every target is a negative at every step (the exact full softmax, with gradient through all of them).

The oracle that sampled negatives approximate, feasible when the label set fits a few encoder
passes per step (DEXML, Gupta et al., ICLR 2024, trains XMC dual encoders this way). The sampler
draws nothing: the trainer encodes all N targets in chunks with a cached gradient
(memory/cached_targets.py) and passes them as one shared pool, masked per query (its positives and
their duplicates; for losses that read ``pool_pos``, every other positive of the query is a term).

    negminer train --negatives all --loss decoupled --chunk-size 512
"""

from __future__ import annotations

from negminer.samplers.base import Draw, Sampler


class AllSampler(Sampler):
    name = "all"
    needs_store = False
    all_targets = True

    @classmethod
    def from_config(cls, cfg, common: dict) -> "AllSampler":
        return cls()

    def sample(self, q, batch, store):
        return Draw.empty(len(q))
