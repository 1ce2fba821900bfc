"""The first-draw proposal log Q [B, N] of a store-based sampler, for diagnostics (small N only)."""

from __future__ import annotations

import math

import torch


def store_proposal(sampler, q, batch, store, rows=None, scores=None) -> torch.Tensor:
    """log softmax(stale scores / tau_s) over ``rows`` ([M] shared, [B, M] per query with ``scores``,
    None = all rows), exclusions and margin applied, -inf elsewhere; on the CPU."""
    b = len(q)
    if rows is None:
        rows = torch.arange(store.n)
    if scores is None:
        scores = store.scores(q, rows).cpu()
    rows = rows.unsqueeze(0).expand(b, -1) if rows.dim() == 1 else rows.cpu()
    scores = scores.cpu().float()
    bad = batch.excl.contains(rows) | torch.isneginf(scores)
    over = sampler.margin_over(q.cpu(), batch)
    if over is not None:
        bad |= scores > over.unsqueeze(1)
    logits = torch.full((b, store.n), -math.inf)
    logits.scatter_reduce_(1, rows, (scores * sampler.scale(batch)).masked_fill(bad, -math.inf), reduce="amax")
    return logits.log_softmax(-1)
