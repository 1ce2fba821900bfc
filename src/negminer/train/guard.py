"""What keeps a run from being lost: divergence checks beyond NaN, and signals turned into a checkpoint.

Divergence (``--divergence-factor F``, 100 by default; ``--on-nan``): besides non-finite values, a step is
diverging when its gradient norm exceeds F x the largest of the last 50 healthy steps, or its loss exceeds
both F x and 10 + their running median (from step 10 on: the first steps set the scale), or when applying it
scales the weights' norm by more than F (or less than 1/F). A weight blow-up is seen after the update, so it
always stops the run; the others are skipped with ``--on-nan skip``. With ``lr 1e6`` the first step multiplies
the static tower's weights' norm by ~1e6; a healthy step changes it by far less than 1%.
The gradient norm is compared with the window's largest, not its median: late in a contrastive run most
batches are easy and their gradient norms tiny, so a normal hard batch is hundreds of times the median
(MiniLM on SciFact, lr 1e-4, step 893: 7.1 against a median of 0.031, a false stop before this rule).

Signals: SIGINT and SIGTERM set a flag; the loop checks it after each step, writes a checkpoint and stops
with exit code 128 + the signal (130, 143). A second signal stops at once (exit 130; a save it interrupts leaves
the previous checkpoint whole).
"""

from __future__ import annotations

import math
import signal
import statistics
import threading
from collections import deque

WINDOW, WARMUP = 50, 10


class DivergenceGuard:
    def __init__(self, factor: float):
        self.factor = factor
        self.loss: deque = deque(maxlen=WINDOW)
        self.grad: deque = deque(maxlen=WINDOW)

    def _ready(self, history: deque) -> bool:
        return bool(self.factor) and len(history) >= WARMUP

    def check_grad(self, norm: float) -> str | None:
        """A reason to reject the step's gradient, or None."""
        if not math.isfinite(norm):
            return f"the gradient norm is {norm}"
        if not self._ready(self.grad) or norm <= self.factor * (top := max(self.grad)):
            return None
        return f"the gradient norm is {norm:.4g}, {norm / top:.0f}x the largest of the last {len(self.grad)} steps ({top:.4g})"

    def check_loss(self, loss: float) -> str | None:
        if not self._ready(self.loss):
            return None
        med = statistics.median(self.loss)
        if loss > self.factor * med and loss > med + 10.0:
            return f"the loss is {loss:.4g}, {loss / med:.0f}x its running median {med:.4g}"
        return None

    def accept(self, loss: float, norm: float) -> None:
        """A healthy step: its loss and gradient norm join the running scale."""
        if math.isfinite(loss):
            self.loss.append(loss)
        if math.isfinite(norm) and norm > 0:
            self.grad.append(norm)

    def check_weights(self, before: float, after: float) -> str | None:
        if not math.isfinite(after):
            return f"the weights' norm is {after}"
        if not self.factor or before <= 0:
            return None
        r = after / before
        if r > self.factor or r < 1 / self.factor:
            return f"one update scaled the weights' norm by {r:.3g} ({before:.4g} -> {after:.4g})"
        return None

    def state(self) -> dict:
        return {"loss": list(self.loss), "grad": list(self.grad)}

    def load(self, st: dict) -> None:
        self.loss.extend(st.get("loss", []))
        self.grad.extend(st.get("grad", []))


class Signals:
    """Context manager: SIGINT / SIGTERM set ``.received`` (the signal number) instead of raising."""

    def __init__(self):
        self.received = 0
        self._old: dict = {}

    def _handler(self, signum, frame):
        if self.received:  # a second signal: stop now (a save in progress is atomic: the old checkpoint stays)
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False
