"""Which targets each query must never use as a negative (its positives and their text duplicates).

Kept sparse, as (query, row) pairs sorted by one int64 key, so that masking costs the number of
excluded pairs, never B x N. Every mask in the package comes from here:

    ex = Exclusions([{3, 9}, {4}], n=100)
    ex.contains(torch.tensor([[3, 4], [3, 4]]))      # per query: [[True, False], [False, True]]
    ex.dense(None)                                   # [B, n] bool (diagnostics, small n only)
    qi, pos = ex.positions(cand_rows)                # pairs inside a candidate list, sorted by position
"""

from __future__ import annotations

import torch


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
