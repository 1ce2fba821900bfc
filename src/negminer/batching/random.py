"""Random batches: a fresh permutation of the training queries each epoch, drop-last.

The batch of any step is a pure function of (seed, step), so a resumed run sees exactly the
batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import numpy as np


class RandomBatcher:
    def __init__(self, num_examples: int, batch_size: int, seed: int):
        if num_examples < batch_size:
            raise ValueError(f"batch size {batch_size} exceeds the {num_examples} training queries")
        self.n, self.batch_size, self.seed = num_examples, batch_size, seed
        self._perm_epoch, self._perm = -1, None

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.batch_size

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batch index within the epoch) of a 0-based step."""
        return divmod(step, self.batches_per_epoch)

    def batch(self, step: int) -> np.ndarray:
        epoch, i = self.position(step)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch, 17]).permutation(self.n)
            self._perm_epoch = epoch
        return self._perm[i * self.batch_size : (i + 1) * self.batch_size]
