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

Which rows: the cohort the map describes, the rows whose embeddings predate the last update (or the
fill), ``age <= since``: they were all moved to (or encoded by) the tower as it was at that update.
Landmarks come from the cohort and only the cohort moves; rows encoded since (write-back, fraction,
this step's encodes) are fresher than the map's inputs and stay as they are (moving a fresh row by
the average drift of old ones makes it stale). After the update the whole cohort is as of this step.

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
from negminer.rng import generator


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

    since: int | None = None  # the cohort: rows with age <= since (set at setup, then at each update)

    def setup(self, store, pool, encode, seed: int = 0) -> None:
        super().setup(store, pool, encode, seed)
        if self.since is None:  # after the fill (a resumed run restores it)
            self.since = int(store.age[self.pool_rows()].max())

    def after_step(self, f: Fresh) -> None:
        step = f.step + 1
        if step % self.every:
            return
        rows = self.pool_rows()
        rows = rows[self.store.age[rows] <= self.since]  # the cohort: not encoded since the last update
        self.since = step
        if len(rows) < 2:
            return
        pick = self.landmark_positions(len(rows), step)
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

    def landmark_positions(self, m: int, step: int) -> torch.Tensor:
        """Positions of the landmarks among ``m`` cohort rows at ``step``: uniform, from this part's own generator."""
        return torch.randperm(m, generator=generator(self.seed, step, "nystrom"))[: self.landmarks]

    def state(self) -> tuple[dict, dict]:
        return {}, {"since": self.since}

    def load_state(self, tensors: dict, meta: dict) -> None:
        self.since = meta.get("since")

    def _moved(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        y = x @ a
        return torch.nn.functional.normalize(y, dim=1) if self.normalize else y
