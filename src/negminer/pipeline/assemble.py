"""From a draw to a loss's keyword arguments: the one place that knows how pools combine (the
composition lives here, not in losses/, which see tensors only).

A loss declares the fields it reads (``needs``: ``pool`` in-batch negatives, ``neg`` drawn
negatives, ``log_pi`` their correction, ``log_z`` the cache's partition function); the trainer
and the diagnostics call ``loss(**loss_inputs(...))`` and never branch on the loss.

In-batch and drawn negatives together (Yang et al., "Mixed Negative Sampling for Learning Two-tower
Neural Networks in Recommendations", WWW 2020): both are samples of the same targets, so each
candidate j of query i gets the expected number of times it appears in either,
    pi_ij = c_i(j) + pi_sampler(i, j),
and sum_{j in both pools} exp(s_ij) / pi_ij estimates the partition function once (the balance
heuristic of multiple importance sampling). c_i(j) is the expected count over batches (the batcher's
``log_batch_count``: random batches, NGAME's whole clusters, a micro-batch of either): query i's own
draw does not depend on which queries share its batch, so the two expectations add. With shared
negatives the sampled part, sum over the batch's queries i' of pi_i'(j), does depend on them, so
there c_i(j) is taken given the batch's queries, sum over the other queries m of the batch of
w_m(j) = [j in pos(m)] / |pos(m)|, wherever a sampler could have drawn j (exact given the batch), and
over batches only where no sampler could (outside a partial cache or a stream's queue). (Given the
batch everywhere is unbiased too, but it weighs an in-batch column by about 1 instead of 1 / c, so the
batch stops standing for the targets like it: on gcide-rd the audit's standard error of Z_hat / Z
grew from 0.08 to 0.18 with uniform draws and recall@10 fell by 0.016.) Without a correcting sampler
the pool is left as is.
Each query's estimate is over its eligible rows: not its positives or their duplicates, and not the
rows the sampler's margin dropped (``Draw.drop``), whichever pool brings them.
"""

from __future__ import annotations

import math

import torch

from negminer.types import Exclusions


def inbatch_mask(pos_rows: torch.Tensor, excl: Exclusions) -> torch.Tensor:
    """[B, B] bool, True where column j (the positive of query j) must not be a negative for row i: the
    label itself (j = i), and targets excluded for query i (its positives, their duplicates)."""
    b = len(pos_rows)
    mask = excl.contains(pos_rows.to(excl.device).unsqueeze(0).expand(b, -1)).cpu()
    return mask | torch.eye(b, dtype=torch.bool)


def pool_mask(batch, draw) -> torch.Tensor:
    """The in-batch pool's mask: ``inbatch_mask`` and the columns the sampler's margin dropped."""
    mask = inbatch_mask(batch.pos_rows, batch.excl)
    if draw is not None and draw.drop is not None:
        mask |= draw.drop(batch.pos_rows).cpu()
    return mask


def loss_inputs(loss, q, pos, scale, batch, draw, neg, inbatch: bool = True, log_batch_count=None,
                share: bool = False) -> dict:
    """``log_batch_count(rows [1 or B, m], queries [B]) -> [B, m]``: log expected count of target rows
    among each query's in-batch negatives (the batcher's);
    ``share``: every query scores every query's drawn negatives (see ``shared_inputs``)."""
    needs, dev = loss.needs, q.device
    if share and neg is not None and "pool" in needs:
        return shared_inputs(q, pos, scale, batch, draw, neg, inbatch, log_batch_count)
    kw = {"q": q, "pos": pos, "scale": scale}
    use_pool = inbatch and "pool" in needs
    corrected = "log_pi" in needs and draw.log_pi is not None and neg is not None
    if use_pool:
        kw["pool"] = pos
        kw["pool_mask"] = pool_mask(batch, draw).to(dev)
        if "pool_pos" in needs and batch.positives is not None:
            kw["pool_pos"] = pool_positives(batch).to(dev)
    if "neg" in needs and neg is not None:
        kw["neg"] = neg
        kw["neg_mask"] = draw.mask.to(dev)
    if corrected:
        neg_lp, pool_lp = draw.log_pi, draw.pool_log_pi
        if use_pool and log_batch_count is not None:
            b = len(batch.pos_rows)
            neg_lp = torch.logaddexp(neg_lp, log_batch_count(draw.ids, batch.queries))
            cb = log_batch_count(batch.pos_rows.unsqueeze(0), batch.queries).expand(b, -1)
            pool_lp = cb if pool_lp is None else torch.logaddexp(pool_lp, cb)
        kw["neg_log_pi"] = neg_lp.to(dev)
        if use_pool and pool_lp is not None:
            kw["pool_log_pi"] = pool_lp.to(dev)
    if "log_z" in needs:
        kw["log_z"] = None if draw.log_z is None else draw.log_z.to(dev)
    return kw


def mixture_log_count(batch, rows: torch.Tensor, sampled: torch.Tensor, log_batch_count) -> torch.Tensor:
    """Shared negatives: [B, m] log expected count of candidate ``rows`` ([1 or B, m]) in query i's pools: the
    sampled part ``sampled`` ([1 or B, m], -inf where no sampler could draw the row) plus the in-batch pool's,
    given the batch's queries where a sampler could draw the row, over batches (the batcher's) where it could
    not."""
    b = len(batch.pos_rows)
    rows = rows.cpu().reshape(len(rows), -1).expand(b, -1)
    sampled = sampled.cpu().expand(b, -1)
    given = log_count_given_batch(batch, rows)
    over = log_batch_count(rows, batch.queries).expand(b, -1)
    return torch.logaddexp(sampled, torch.where(torch.isfinite(sampled), given, over))


def log_count_given_batch(batch, rows: torch.Tensor) -> torch.Tensor:
    """[B, m] log of sum over the batch's other queries m of [row in pos(m)] / |pos(m)|: how often ``rows``
    ([B, m]) show up among query i's in-batch negatives given the batch's queries."""
    pos = batch.positives
    if pos is None:
        raise ValueError("the in-batch count given the batch needs Batch.positives (every positive of each query)")
    b = len(batch.pos_rows)
    size = torch.bincount(pos.qi.cpu(), minlength=b).clamp(min=1).double()
    uniq, inv = rows.unique(return_inverse=True)
    w = pos.contains(uniq.unsqueeze(0).expand(b, -1)).cpu().double() / size.unsqueeze(1)   # [B, U]: w_m(u)
    total = w.sum(0)[inv]                                                                   # [B, m]
    own = w.gather(1, inv)                                                                  # w_i(row)
    return (total - own).clamp(min=0).log().float()


def pool_positives(batch) -> torch.Tensor:
    """[B, B] bool: column j (the positive drawn for query j) is another positive of query i, counted once
    per distinct row and never i's own row (that one is ``pos``)."""
    pr = batch.pos_rows
    return positive_terms(batch.positives, pr, pr, first_occurrence(pr))


def first_occurrence(rows: torch.Tensor) -> torch.Tensor:
    """[M] bool: True at the first position of each distinct row."""
    _, inv = rows.unique(return_inverse=True)
    m = len(rows)
    first = torch.full((int(inv.max()) + 1 if m else 0,), m, dtype=torch.long).scatter_reduce(
        0, inv, torch.arange(m), "amin")
    return first[inv] == torch.arange(m)


def positive_terms(positives, own: torch.Tensor, rows: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """[A, M] bool: pool column j (target ``rows[j]``, used only where ``keep[j]``) is a positive of anchor a
    other than its own ``own[a]``. ``positives``: Exclusions of each anchor's positives."""
    a = len(own)
    hit = positives.contains(rows.unsqueeze(0).expand(a, -1)).cpu()
    return hit & keep.cpu().unsqueeze(0) & (rows.unsqueeze(0) != own.unsqueeze(1))


def all_inputs(loss, q, scale, batch, emb) -> dict:
    """Every target as a candidate (``--negatives all``): ``emb`` [N, d] is the shared pool; each query's
    positives and their duplicates are masked; with ``pool_pos`` every other positive is a term."""
    dev = q.device
    kw = {"q": q, "pos": emb[batch.pos_rows.to(emb.device)], "scale": scale, "pool": emb,
          "pool_mask": batch.excl.dense(None).to(dev)}
    if "pool_pos" in loss.needs and batch.positives is not None:
        pp = batch.positives.dense(None)
        pp[torch.arange(len(pp)), batch.pos_rows.to(pp.device)] = False
        kw["pool_pos"] = pp.to(dev)
    return kw


def shared_inputs(q, pos, scale, batch, draw, neg, inbatch: bool = True, log_batch_count=None) -> dict:
    """Shared negatives: the B x k drawn negatives (and the in-batch positives) form one pool that
    every query scores. The pool is the union of all queries' samples, so candidate j's expected count
    in it is the same for every query, sum_i' pi_i'(j) (+ c_batch(j) with the in-batch pool): one
    correction per candidate, from ``draw.cross``. Each query's positives and duplicates are masked.
    Uncorrected draws (mined lists, ANCE) give an uncorrected pool, as sentence-transformers'
    MultipleNegativesRankingLoss does with (anchor, positive, negative) rows."""
    dev, b = q.device, len(q)
    ids = draw.ids.reshape(-1)
    flat = neg.reshape(len(ids), neg.shape[-1])
    mask = batch.excl.contains(ids.expand(b, -1)) | draw.mask.reshape(1, -1)
    if draw.drop is not None:  # another query's draw above this query's margin
        mask |= draw.drop(ids).cpu()
    pools, masks, lps = [flat], [mask.to(dev)], []
    corrected = draw.log_pi is not None
    if corrected:
        if draw.cross is None:
            raise ValueError("shared negatives need the sampler's cross inclusion probabilities (Draw.cross)")
        lp = draw.cross(ids).logsumexp(0, keepdim=True)                     # [1, B k]
        if inbatch and log_batch_count is not None:
            lp = mixture_log_count(batch, ids.unsqueeze(0), lp, log_batch_count)
        lps.append(lp.expand(b, -1))
    if inbatch:
        pools.insert(0, pos)
        masks.insert(0, pool_mask(batch, draw).to(dev))
        if corrected:
            plp = (draw.pool_log_pi.logsumexp(0, keepdim=True) if draw.pool_log_pi is not None
                   else torch.full((1, b), -math.inf))
            if log_batch_count is not None:
                plp = mixture_log_count(batch, batch.pos_rows.unsqueeze(0), plp, log_batch_count)
            lps.insert(0, plp.expand(b, -1))
    kw = {"q": q, "pos": pos, "scale": scale, "pool": torch.cat(pools), "pool_mask": torch.cat(masks, 1)}
    if corrected:
        kw["pool_log_pi"] = torch.cat(lps, 1).to(dev)
    return kw
