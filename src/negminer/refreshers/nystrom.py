"""Nystrom refresh: move every stale row by a linear map fitted on a few re-encoded landmarks.

Monath, Zaheer, Allen, McCallum, "Improving Dual-Encoder Training through Dynamic Indexes for
Negative Mining", AISTATS 2023. Every T steps re-encode m landmark targets (uniform among the
sampler's rows, seeded by (seed, step)). With X_L their cached and Y_L their fresh embeddings, the
Nystrom approximation of all fresh embeddings under the linear kernel is

    Y ~ K(X, X_L) K(X_L, X_L)^+ Y_L = X X_L^+ Y_L = X A,   A = argmin_A ||X_L A - Y_L||^2,

solved with a ridge towards the identity, lam ||A - I||^2 (lam = ridge * tr(X_L^T X_L) / d), so that
few or degenerate landmarks leave rows where they are. A costs O(m d^2); applying it to the other
M - m rows costs O(M d^2), streamed in chunks, no target encodes. Exact when the true change is
linear and the landmarks span the rows. Moved rows keep their age (they were not re-encoded);
with ``normalize`` (a tower with unit outputs) they are put back on the sphere.

Every fifth landmark is held out: maps fitted on the other four fifths with ridge r, 10r, ..., 10^6 r
are scored on it, the best ridge is kept, and if even it leaves the held-out rows staler than
they were (a drift the map cannot represent, or too few landmarks for d), no row is moved.
Logs ``nystrom_before`` / ``nystrom_after`` (held-out staleness ||x - y||^2 / ||y||^2 without and with
the best map), ``nystrom_ridge`` and ``nystrom_applied``.

Example::  negminer train --negatives cache --refresh auto,nystrom --nystrom-landmarks 768 --nystrom-every 50
"""

from __future__ import annotations

import torch

from negminer.refreshers.base import Fresh, Refresher, relative_change


def fit_map(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """A [d, d] minimising ||x A - y||^2 + lam ||A - I||^2 (float64 normal equations)."""
    x, y = x.double(), y.double()
    d = x.shape[1]
    g = x.T @ x
    lam = ridge * float(g.diagonal().sum()) / d
    eye = torch.eye(d, dtype=torch.float64)
    return torch.linalg.solve(g + lam * eye, x.T @ y + lam * eye).float()


class Nystrom(Refresher):
    name = "nystrom"

    def __init__(self, landmarks: int, every: int = 50, ridge: float = 1e-3, normalize: bool = False,
                 chunk: int = 65536):
        super().__init__()
        if landmarks < 1 or every < 1 or ridge < 0:
            raise ValueError("nystrom: landmarks and every must be >= 1 and ridge >= 0")
        self.landmarks, self.every, self.ridge, self.normalize, self.chunk = landmarks, every, ridge, normalize, chunk

    def after_step(self, f: Fresh) -> None:
        step = f.step + 1
        if step % self.every:
            return
        rows = self.pool_rows()
        g = torch.Generator().manual_seed(self.seed * 104_729 + step)
        pick = torch.randperm(len(rows), generator=g)[: self.landmarks]
        marks = rows[pick]
        old = self.store.embeddings(marks)
        new = self.encode(marks, step)
        held = torch.arange(len(marks)) % 5 == 4
        ridge = self.ridge
        if int(held.sum()) and int((~held).sum()):  # the ridge that predicts the held-out fifth best
            before = relative_change(old[held], new[held])
            after, ridge = min((relative_change(self._moved(old[held], fit_map(old[~held], new[~held], r)), new[held]), r)
                               for r in (self.ridge * 10 ** i for i in range(7)))
            self.stats = {"nystrom_before": before, "nystrom_after": after, "nystrom_ridge": ridge,
                          "nystrom_applied": float(after < before)}
            if after >= before:  # the map would make held-out rows staler: leave the other rows where they are
                return
        a = fit_map(old, new, ridge)
        rest = torch.ones(len(rows), dtype=torch.bool)
        rest[pick] = False
        rest = self.store.held(rows[rest])  # a sharded store (torchrun): each process moves its own rows
        for s in range(0, len(rest), self.chunk):
            r = rest[s:s + self.chunk]
            self.store.write(r, self._moved(self.store.embeddings(r, local=True), a), None)

    def _moved(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        y = x @ a
        return torch.nn.functional.normalize(y, dim=1) if self.normalize else y
