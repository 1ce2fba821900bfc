"""The types that pass between parts: which rows each query must not use (``Exclusions``), what a
sampler sees (``Batch``) and returns (``Draw``), and what a step encoded (``Fresh``, for refreshers).

A neutral module: samplers produce these, losses' inputs are assembled from them (pipeline/), memory
strategies and refreshers read them, and none of those imports another for the types.

Exclusions are kept sparse, as (query, row) pairs sorted by one int64 key, so that masking costs the
number of excluded pairs, never B x N. Every mask in the package comes from here:

    ex = Exclusions([{3, 9}, {4}], n=100)
    ex.contains(torch.tensor([[3, 4], [3, 4]]))      # per query: [[True, False], [False, True]]
    ex.dense(None)                                   # [B, n] bool (diagnostics, small n only)
    qi, pos = ex.positions(cand_rows)                # pairs inside a candidate list, sorted by position

A draw's weights: ``log_pi`` is the log inclusion probability (without replacement) or the log
expected count k q (with replacement), so that sum_{drawn} exp(s_j) / pi_j is unbiased for
sum_j exp(s_j) over the query's eligible rows; ``pool_log_pi`` gives the same for each batch
positive (-inf where the sampler could not have drawn it: outside its candidates, excluded, or
dropped by the margin), and ``drop`` says which rows the margin removed from a query's eligible set,
so that no other pool (in-batch, other queries' draws) brings them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Batch:
    step: int
    pos_rows: torch.Tensor           # [B] target row of each query's positive this step (CPU)
    excl: "Exclusions"               # rows never to use as negatives, per query (positives, duplicates)
    pos_emb: torch.Tensor            # [B, d] fresh positive embeddings, detached
    generator: torch.Generator       # CPU, seeded from (seed, step)
    loss_scale: float                # 1 / loss temperature
    device_generator: torch.Generator | None = None  # on the scoring device, seeded from (seed, step)
    queries: torch.Tensor | None = None  # [B] training-query index of each row (samplers with per-query lists)
    positives: "Exclusions | None" = None  # every positive of each query (losses that read pool_pos)
    dist: object | None = None       # negminer.dist.Dist under torchrun: each rank scores its shard of the store

    def gen(self, device) -> torch.Generator:
        device = torch.device(device)
        if device.type == "cpu" or self.device_generator is None:
            return self.generator
        return self.device_generator


@dataclass
class Draw:
    ids: torch.Tensor                       # [B, k] target rows (CPU)
    mask: torch.Tensor                      # [B, k] True = not a usable negative
    log_pi: torch.Tensor | None = None      # [B, k] log inclusion probability / expected count (None: no correction)
    pool_log_pi: torch.Tensor | None = None  # [B, B] the same for each batch positive (in-batch mixture)
    log_z: torch.Tensor | None = None       # [B] logsumexp of usable stale scores x loss scale
    cross: Callable[[torch.Tensor], torch.Tensor] | None = None  # rows [M] -> [B, M] log expected count of
    # each row among each query's usable draws (shared negatives: every query's pi of every draw)
    drop: Callable[[torch.Tensor], torch.Tensor] | None = None  # rows [M] -> [B, M] bool: the margin removed
    # the row from the query's eligible set (None: no margin; "the margin": --margin, --relative-margin and
    # --max-score, a row dropped when any drops it)

    @staticmethod
    def empty(b: int) -> "Draw":
        return Draw(torch.zeros(b, 0, dtype=torch.long), torch.zeros(b, 0, dtype=torch.bool))


@dataclass
class Fresh:
    """What a step encoded, for the refreshers (``after_step``)."""

    step: int                                  # the step just taken (its embeddings predate the update)
    pos_rows: torch.Tensor                     # [B] positives' store rows
    pos_emb: torch.Tensor                      # [B, d] their training-forward embeddings (detached)
    drawn: torch.Tensor | None = None          # distinct drawn rows encoded with gradient this step
    drawn_emb: torch.Tensor | None = None      # their training-forward embeddings (detached)


class Exclusions:
    def __init__(self, sets, n: int, device=None):
        qi = [i for i, s in enumerate(sets) for _ in s]
        rows = [int(r) for s in sets for r in s]
        self.b, self.n = len(sets), n
        self.device = torch.device(device or "cpu")
        qi = torch.tensor(qi, dtype=torch.long, device=self.device)
        rows = torch.tensor(rows, dtype=torch.long, device=self.device)
        self.key = (qi * (n + 1) + rows).unique()  # sorted, one per pair
        self.qi, self.rows = self.key // (n + 1), self.key % (n + 1)

    @classmethod
    def from_pairs(cls, qi: torch.Tensor, rows: torch.Tensor, b: int, n: int) -> "Exclusions":
        """From (query, row) pairs as tensors (no Python loop over the sets)."""
        out = object.__new__(cls)
        out.b, out.n, out.device = b, n, qi.device
        out.key = (qi.long() * (n + 1) + rows.long()).unique()
        out.qi, out.rows = out.key // (n + 1), out.key % (n + 1)
        return out

    def to(self, device) -> "Exclusions":
        device = torch.device(device)
        if device == self.device:
            return self
        out = object.__new__(Exclusions)
        out.b, out.n, out.device = self.b, self.n, device
        out.key, out.qi, out.rows = (t.to(device) for t in (self.key, self.qi, self.rows))
        return out

    def contains(self, rows: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        """bool like ``rows``: rows[i, j] is excluded for query ``query[i]`` (default: row i's query)."""
        rows = rows.to(self.key.device)
        if query is None:
            query = torch.arange(rows.shape[0], device=rows.device).view(-1, *([1] * (rows.dim() - 1)))
        if not len(self.key):
            return torch.zeros(rows.shape, dtype=torch.bool, device=rows.device)
        k = query * (self.n + 1) + rows
        i = torch.searchsorted(self.key, k).clamp(max=len(self.key) - 1)
        return self.key[i] == k

    def dense(self, cand: torch.Tensor | None) -> torch.Tensor:
        """[B, M] bool for candidates shared by all queries ([M] rows; None = all n rows) or per query ([B, M])."""
        if cand is None:
            mask = torch.zeros(self.b, self.n, dtype=torch.bool, device=self.device)
            mask[self.qi, self.rows] = True
            return mask
        if cand.dim() == 1:
            cand = cand.unsqueeze(0).expand(self.b, -1)
        return self.contains(cand)

    def positions(self, cand: torch.Tensor | None, sorted_cand: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The excluded pairs that fall inside a candidate list: (query, position in ``cand``), sorted
        by position. ``cand`` None means all rows (position = row); ``sorted_cand`` skips a sort."""
        if cand is None:
            order = self.rows.argsort(stable=True)
            return self.qi[order], self.rows[order]
        cand = cand.to(self.rows.device)
        if sorted_cand:
            srt, back = cand, None
        else:
            srt, back = cand.sort()
        i = torch.searchsorted(srt, self.rows).clamp(max=max(len(srt) - 1, 0))
        hit = (srt[i] == self.rows) if len(srt) else torch.zeros_like(self.rows, dtype=torch.bool)
        qi, pos = self.qi[hit], i[hit]
        if back is not None:
            pos = back[pos]
        order = pos.argsort(stable=True)
        return qi[order], pos[order]
