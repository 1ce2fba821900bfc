"""Gradient accumulation: K micro-batches per optimiser step (the baseline ContAccum improves on).

The optimiser applies (1/K) sum_k grad L(micro-batch k), where micro-batch k holds b = B/K of the
step's B queries. Memory is that of a batch of b; but each query's in-batch negatives are only the
b - 1 other positives of its micro-batch, so the gradient is not that of a batch of B (GradCache's
is). Drawn negatives are sampled per micro-batch; the in-batch/sampled mixture uses the micro-batch's
expected in-batch count, which the batcher gives for a batch of b (random batches: c_B(j) (b - 1) /
(B - 1); NGAME: micro-batches of whole clusters, so C must divide b). With
``--memory contaccum`` each micro-batch's loss also sees the memory bank (memory/contaccum.py).

    negminer train --memory accumulation --accumulation 8 --batch-size 512 ...
"""

from __future__ import annotations

import math

import torch

from negminer.types import Draw


def accumulation_step(tr, step: int, idx, pos_rows) -> float:
    """One optimiser step of Trainer ``tr`` over cfg.accumulation micro-batches; returns the mean loss."""
    ph, bank = tr.phases, tr.bank
    k = tr.cfg.accumulation
    b = len(idx) // k

    def count(rows, queries=None):
        return tr.batcher.log_batch_count(rows, queries, size=b)

    extend = None
    if bank is not None and step >= tr.cfg.bank_warmup:
        def extend(kw, batch):
            return bank.extend(kw, batch, tr.dataset.num_targets)
    total, pieces = 0.0, []
    for j in range(k):
        mi, mp = idx[j * b:(j + 1) * b], pos_rows[j * b:(j + 1) * b]
        with ph("query_encode"):
            q = tr.embed_training_queries(mi)  # under torchrun: this rank's share, gathered
        tr.counters.query_encodes += len(mi)
        tr.batcher.record(mi, q)
        with ph("target_encode_pos"):
            p = tr.embed_target_rows(mp)
        tr.counters.target_encodes += len(mp)
        loss, parts = tr.negatives_and_loss(step, mi, mp, q, p, tr.embed_target_rows, micro=j, weight=1.0 / k,
                                            extend=extend, log_batch_count=count if k > 1 else None)
        if parts is None:
            return loss
        if bank is not None:
            with ph("loss_backward"):
                bank.push(q, p, mp, mi, *drawn_embeddings(tr, parts), exclude=[tr.exclude(i) for i in mi],
                          positives=[tr.pos_sets[i] for i in mi])
        total += loss / k
        pieces.append(parts)
    if not tr.optimizer_step(step):
        return math.nan
    tr.update_store(step, *merge(tr, step, idx, pos_rows, pieces))
    return total


def drawn_embeddings(tr, parts):
    """(embeddings, rows) of a micro-batch's distinct drawn negatives, or (None, None)."""
    _, _, _, uniq, fresh, cached = parts
    if fresh is not None:
        return fresh, uniq
    if cached is not None and len(cached):
        return tr.store.embeddings(cached).to(tr.device), cached
    return None, None


def merge(tr, step: int, idx, pos_rows, pieces):
    """The micro-batches' pieces as one step's, for ``Trainer.update_store`` (write-back, refreshers)."""
    if len(pieces) == 1:
        return pieces[0]
    p = torch.cat([x[2] for x in pieces])
    batch = tr.make_batch(step, idx, pos_rows, p)
    draws = [x[1] for x in pieces]
    draw = Draw(torch.cat([d.ids for d in draws]), torch.cat([d.mask for d in draws]))

    def cat(i):
        parts = [x[i] for x in pieces if x[i] is not None]
        return torch.cat(parts) if parts else None

    return batch, draw, p, cat(3), cat(4), cat(5)
