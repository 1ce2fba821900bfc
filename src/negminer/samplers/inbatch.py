"""In-batch negatives: every other query's positive is a negative for this query.

Henderson et al., "Efficient Natural Language Response Suggestion for Smart Reply", 2017;
Karpukhin et al., "Dense Passage Retrieval", EMNLP 2020.

The pool is the batch's positives [B, d]; query i's own positive is column i (the label), and
column j != i is masked when target pos_rows[j] is excluded for query i (its positive, a duplicate
of one, or the same target drawn twice). No extra target is encoded.
"""

from __future__ import annotations

from negminer.samplers.base import Draw, Sampler


class InBatchSampler(Sampler):
    """Draws nothing: the trainer uses the batch's positives as the shared negative pool."""

    name = "inbatch"
    needs_store = False

    @classmethod
    def from_config(cls, cfg, common: dict) -> "InBatchSampler":
        return cls()

    def sample(self, q, batch, store):
        return Draw.empty(len(q))
