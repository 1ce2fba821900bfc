"""Full refresh: re-encode every row the sampler reads every R steps.

The exact-softmax oracle (R = 1) and ANCE (Xiong et al., ICLR 2021: the index is rebuilt from a
full re-encoding every R steps, stale in between). Costs M target encodes per refresh.

Example::  negminer train --negatives ance --refresh-every 100
"""

from __future__ import annotations

from negminer.refreshers.base import Fresh, Refresher


class Full(Refresher):
    name = "full"

    def __init__(self, every: int = 1):
        super().__init__()
        self.every = max(1, every)

    def due(self, step: int) -> bool:
        """True if the rows are re-encoded just before ``step``."""
        return step % self.every == 0

    def after_step(self, f: Fresh) -> None:
        if self.due(f.step + 1):
            self.encode(self.pool_rows(), f.step + 1)
