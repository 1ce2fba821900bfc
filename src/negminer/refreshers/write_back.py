"""Write-back: the drawn targets and the batch's positives were just encoded; keep them.

Lindgren et al., NeurIPS 2021 (negative cache): every target encoded for the loss goes back into
the cache for free, so the rows the sampler likes best are also the freshest. ``mode``:

- eval: the store holds eval-mode embeddings. Without dropout in the target tower the training
  forward is the eval forward (free); with dropout the rows are re-encoded in eval mode after the
  optimiser step (counted as target encodes, age = next step).
- train: the training forward's embeddings as they were (free; dropout noise included).

Logs ``staleness`` (mean ||cached - fresh||^2 / ||fresh||^2 of the drawn rows before the write).

Example::  negminer train --negatives cache --write-back train
"""

from __future__ import annotations

import torch

from negminer.errors import TrainingDiverged
from negminer.refreshers.base import Fresh, Refresher, relative_change


class WriteBack(Refresher):
    name = "write-back"
    phase = "write_back"

    def __init__(self, mode: str = "eval", dropout: bool = False):
        super().__init__()
        if mode not in ("eval", "train"):
            raise ValueError(f"write-back mode must be eval or train, not {mode!r}")
        self.mode, self.dropout = mode, dropout

    def after_step(self, f: Fresh) -> None:
        drawn = f.drawn
        rows = f.pos_rows if drawn is None else torch.cat([drawn, f.pos_rows])
        emb = f.pos_emb if drawn is None else torch.cat([f.drawn_emb, f.pos_emb.to(f.drawn_emb.device)])
        rows, first = first_occurrence(rows)
        emb = emb.detach()[first.to(emb.device)].float()
        self.stats = {}
        if self.mode == "eval" and self.dropout:
            before = self.store.embeddings(drawn) if drawn is not None else None
            new = self.encode(rows, f.step + 1)
            if drawn is not None:
                self.stats["staleness"] = relative_change(before, new[: len(drawn)])
            return
        if not bool(torch.isfinite(emb).all()):
            raise TrainingDiverged(f"a fresh target embedding is not finite at step {f.step}; the store was not changed")
        if drawn is not None and not (self.mode == "train" and self.dropout):
            self.stats["staleness"] = relative_change(self.store.embeddings(drawn), emb[: len(drawn)])
        self.store.write(rows, emb, f.step)


def first_occurrence(rows: torch.Tensor):
    """Distinct rows and the index of each one's first occurrence, in order of first occurrence."""
    uniq, inv = rows.unique(return_inverse=True)
    first = torch.full((len(uniq),), len(rows), dtype=torch.long).scatter_reduce_(
        0, inv, torch.arange(len(rows)), reduce="amin")
    order = first.argsort()
    return uniq[order], first[order]
