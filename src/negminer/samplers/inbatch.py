"""In-batch negatives: every other query's positive is a negative for this query.

Henderson et al., "Efficient Natural Language Response Suggestion for Smart Reply", 2017;
Karpukhin et al., "Dense Passage Retrieval", EMNLP 2020.

The pool is the batch's positives [B, d]; query i's own positive is column i (the label), and
column j != i is masked when target pos_rows[j] is also a positive of query i (a false negative,
including the same target drawn twice). No extra target is encoded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from negminer.samplers.base import Draw, Sampler


def inbatch_mask(pos_rows: Sequence[int], positives: Sequence[set[int] | dict]) -> torch.Tensor:
    """[B, B] bool, True where column j must not be used as a negative for row i."""
    b = len(pos_rows)
    mask = torch.zeros(b, b, dtype=torch.bool)
    for i in range(b):
        own = positives[i]
        for j in range(b):
            if j == i or pos_rows[j] in own:
                mask[i, j] = True
    return mask


class InBatchSampler(Sampler):
    """Draws nothing: the trainer uses the batch's positives as the shared negative pool."""

    name = "inbatch"

    def sample(self, q, batch, store):
        return Draw.empty(len(q))
