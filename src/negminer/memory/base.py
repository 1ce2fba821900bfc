"""What a memory strategy decides in the one step skeleton (pipeline/step.py): how a step's batch is split into
micro-batches, whether embeddings are made as cached leaves (GradCache) or with a graph, how each micro-batch's
loss is weighted, and what it adds to the loss inputs (ContAccum's bank). The plain strategy: one micro-batch,
with a graph, as is.

    negminer train --memory plain
"""

from __future__ import annotations

import numpy as np


class Memory:
    name = "plain"
    cached = False  # embeddings as leaves without a graph, pushed back through the towers chunk by chunk

    def __init__(self, accumulation: int = 1):
        self.k = accumulation

    def micro_batches(self, idx: np.ndarray, pos_rows: list[int]) -> list[tuple[np.ndarray, list[int]]]:
        """The step's queries in micro-batches of B / k consecutive queries (whole NGAME clusters: rules.py)."""
        b = len(idx) // self.k
        return [(idx[j * b:(j + 1) * b], pos_rows[j * b:(j + 1) * b]) for j in range(self.k)]

    def extend(self, kw: dict, batch, num_targets: int) -> dict:
        """The loss inputs of a micro-batch, with what the strategy adds (nothing here)."""
        return kw

    def after_micro(self, step: int, **pieces) -> None:
        """After a micro-batch's backward (ContAccum pushes it into its bank)."""

    def state(self) -> tuple[dict, dict]:
        return {}, {}

    def load_state(self, tensors: dict, meta: dict) -> None:
        pass
