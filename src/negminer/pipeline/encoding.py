"""Every encode of a training step goes through here: counted, timed, in the training autocast, split across
processes under torchrun (each rank encodes its share of the rows and the shares are gathered, with their
gradient path), and made either with a graph (``cached=False``) or as leaves without one whose gradient is
pushed back through the tower later, chunk by chunk (``cached=True``: GradCache's functional shape, and every
target at once for ``--negatives all``).

    enc = Encoding(model, dist, counters, phases, autocast, query_texts, target_features, chunk=32)
    q = enc.queries(idx, cached=True)           # Embedded: q.emb [B, d], a leaf
    p = enc.targets(pos_rows, cached=True)
    loss(q.emb, p.emb, ...).backward()          # into the leaves
    q.backward(); p.backward()                  # re-encode each chunk with a graph, push its gradient
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from negminer.memory.cached_targets import encode_cached


@dataclass
class Embedded:
    """Embeddings of a set of rows for one (micro-)batch: with a graph (``backward`` does nothing: the loss's
    backward reaches the tower) or a leaf (``backward`` re-encodes and pushes the leaf's gradient)."""

    emb: torch.Tensor
    _backward: Callable[[], None] | None = None

    def backward(self) -> None:
        if self._backward is not None:
            self._backward()


class Encoding:
    """The encoding service of a run (``counters.query_encodes`` / ``target_encodes`` count every pass)."""

    def __init__(self, model, dist, counters, phases, autocast, query_texts, target_features, chunk: int = 32):
        self.model, self.dist, self.counters, self.phases, self.autocast = model, dist, counters, phases, autocast
        self.query_texts, self.target_features, self.chunk = query_texts, target_features, chunk
        self._all_features: dict = {}

    # ---- the towers on this process's rows -------------------------------------------------------
    def _embed_queries(self, idx) -> torch.Tensor:
        m = self.model
        with self.autocast():
            return m.embed_queries(m.tokenize_queries([self.query_texts[int(i)] for i in idx]))

    def embed_target_rows(self, rows) -> torch.Tensor:
        """With-gradient embeddings of store rows on this process (no share, no count)."""
        if len(rows) == 0:  # a rank without a share
            return torch.zeros(0, self.model.dim, device=self.model.device)
        with self.autocast():
            return self.model.embed_targets(self.target_features(rows))

    # ---- a set of rows, split over the processes ----------------------------------------------------
    def _embedded(self, rows, embed, cached: bool, phase: str, count) -> Embedded:
        d, n = self.dist, len(rows)
        mine = rows[d.share(n)] if d.on else rows
        with self.phases(phase):
            if not cached:
                emb = d.gather(embed(mine), n)
                count(n)
                return Embedded(emb)
            enc = encode_cached(lambda r: embed(mine[r]), len(mine), self.chunk, list(self.model.parameters()))
            emb = d.gather(enc.emb, n)  # the gather's backward leaves each rank its own rows' gradient
        count(n)

        def backward():
            with self.phases(phase):
                enc.backward()
            count(n)
        return Embedded(emb, backward)

    def queries(self, idx, cached: bool = False) -> Embedded:
        """Training queries ``idx`` (positions in the training set)."""
        idx = torch.as_tensor(idx, dtype=torch.long) if not torch.is_tensor(idx) else idx
        return self._embedded(idx, self._embed_queries, cached, "query_encode", self._count_queries)

    def targets(self, rows, cached: bool = False, phase: str = "target_encode_pos") -> Embedded:
        """Store rows ``rows`` (positives, drawn negatives)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        return self._embedded(rows, self.embed_target_rows, cached, phase, self._count_targets)

    def all_targets(self, n: int, chunk: int) -> Embedded:
        """Every target, as one cached leaf [n, d] (``--negatives all``); each chunk's inputs tokenised once."""
        d, feats = self.dist, self._all_features

        def encode(rows):
            key = (int(rows[0]), len(rows))
            if key not in feats:
                feats[key] = self.target_features(rows)
            with self.autocast():
                return self.model.embed_targets(feats[key])

        with self.phases("target_encode_neg"):
            enc = encode_cached(encode, n, chunk, params=self.model.parameters(), share=d.share(n),
                                gather=(lambda e: d.gather(e.to(d.device), n).to(self.model.device)) if d.on else None,
                                dim=self.model.dim)
        self._count_targets(n)

        def backward():
            with self.phases("target_encode_neg"):
                enc.backward()
            self._count_targets(n)
        return Embedded(enc.emb, backward)

    def _count_queries(self, n: int) -> None:
        self.counters.query_encodes += n

    def _count_targets(self, n: int) -> None:
        self.counters.target_encodes += n
