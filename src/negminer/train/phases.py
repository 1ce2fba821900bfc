"""Where a step's time goes: seconds per phase, accumulated over the run (and across resume).

Phases: setup (the sampler's setup before the first step: filling the store, building indexes),
batching (clustering batchers: NGAME's clustering and the query encodes it needs), query_encode, target_encode_pos, sample, target_encode_neg, loss_backward, optimizer,
write_back (the write-back refresher: store writes, eval-mode re-encodes included), refresh (the
other refreshers and the sampler's own update).
On a GPU each boundary synchronises, so the split is true (and the step slightly slower).
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

PHASES = ("setup", "batching", "query_encode", "target_encode_pos", "sample", "target_encode_neg", "loss_backward", "optimizer",
          "write_back", "refresh")


class PhaseTimer:
    def __init__(self, device: torch.device, seconds: dict | None = None):
        self.sync = device.type == "cuda"
        self.seconds = {p: 0.0 for p in PHASES}
        self.seconds.update(seconds or {})

    @contextmanager
    def __call__(self, phase: str):
        if self.sync:
            torch.cuda.synchronize()
        t = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self.seconds[phase] += time.perf_counter() - t

    def rounded(self) -> dict:
        return {p: round(v, 3) for p, v in self.seconds.items()}
