"""Gradient accumulation: K micro-batches per optimiser step (the baseline ContAccum improves on).

The optimiser applies (1/K) sum_k grad L(micro-batch k), where micro-batch k holds b = B/K of the
step's B queries. Memory is that of a batch of b; but each query's in-batch negatives are only the
b - 1 other positives of its micro-batch, so the gradient is not that of a batch of B (GradCache's
is). Drawn negatives are sampled per micro-batch; the in-batch/sampled mixture uses the micro-batch's
expected in-batch count, which the batcher gives for a batch of b (random batches: c_B(j) (b - 1) /
(B - 1); NGAME: micro-batches of whole clusters, so C must divide b). With
``--memory contaccum`` each micro-batch's loss also sees the memory bank (memory/contaccum.py).

    negminer train --memory accumulation --accumulation 8 --batch-size 512 ...
"""

from __future__ import annotations

from negminer.memory.base import Memory


class Accumulation(Memory):
    """k micro-batches of B / k queries, each with its own in-batch pool and draws; loss x 1/k each."""

    name = "accumulation"
