"""Random batches: a fresh permutation of the training queries each epoch, drop-last.

The batch of any step is a pure function of (seed, step), so a resumed run sees exactly the
batches an uninterrupted run would have seen.

For the in-batch / sampled mixture (pipeline/assemble.py) the batcher says how often a target shows
up among one query's in-batch negatives: the other B - 1 queries are a uniform sample of the other
n - 1, and each takes one of its positives uniformly, so target j is expected
    c_batch(j) = (B - 1) / (n - 1) * w_j,   w_j = sum over training queries q with j in pos(q) of 1 / |pos(q)|
times (j not a positive of the query itself, which is masked anyway).
"""

from __future__ import annotations

import math

import numpy as np
import torch


class RandomBatcher:
    def __init__(self, num_examples: int, batch_size: int, seed: int, positives=None, num_targets: int = 0):
        if num_examples < batch_size:
            raise ValueError(f"batch size {batch_size} exceeds the {num_examples} training queries")
        self.n, self.batch_size, self.seed = num_examples, batch_size, seed
        self._perm_epoch, self._perm = -1, None
        self.log_w = None
        if positives is not None:  # per training query, its positive rows
            w = np.zeros(num_targets, dtype=np.float64)
            for rows in positives:
                np.add.at(w, np.asarray(list(rows), dtype=np.int64), 1.0 / len(rows))
            with np.errstate(divide="ignore"):
                self.log_w = torch.from_numpy(np.log(w))

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.batch_size

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batch index within the epoch) of a 0-based step."""
        return divmod(step, self.batches_per_epoch)

    def layout(self, epoch: int, salt: int | None = None) -> np.ndarray:
        """The epoch's queries in batch order (batches are consecutive slices of B; the rest is dropped).
        ``salt``: another draw of the same law (``negminer audit`` repeats a step's randomness)."""
        return np.random.default_rng([self.seed, epoch, 17] + ([] if salt is None else [salt])).permutation(self.n)

    def batch(self, step: int) -> np.ndarray:
        epoch, i = self.position(step)
        if epoch != self._perm_epoch:
            self._perm = self.layout(epoch)
            self._perm_epoch = epoch
        return self._perm[i * self.batch_size : (i + 1) * self.batch_size]

    def prepare(self, step: int, encode, dist=None) -> None:
        """Before each step (clustering batchers build their clusters here)."""

    def record(self, idx, q: torch.Tensor) -> None:
        """After each forward: the batch's query embeddings (clustering batchers keep them)."""

    def state(self) -> tuple[dict, dict]:
        return {}, {}

    def load_state(self, tensors: dict, meta: dict) -> None:
        pass

    def log_batch_count(self, rows: torch.Tensor, queries: torch.Tensor | None = None,
                        size: int | None = None) -> torch.Tensor:
        """log c_batch of target ``rows`` (any shape; -inf for targets that are nobody's positive) in a
        (micro-)batch of ``size`` queries (default: the batch; a contiguous slice of a random batch is a
        random batch). The same for every query here (``queries``: the batch's training-query indices, for
        batchers where it is not, e.g. NGAME's; they return [B, m] for rows [1 or B, m])."""
        b = self.batch_size if size is None else size
        c = math.log((b - 1) / max(1, self.n - 1)) if b > 1 else -math.inf
        return (self.log_w[rows.cpu()] + c).float()
