"""The sampler interface and the one streaming draw over the store.

A sampler proposes k negatives per query from the store and says how likely each was to be in
the sample (``Draw``, negminer/types.py): ``log_pi`` is the log inclusion probability (without
replacement) or the log expected count k q (with replacement), so that sum_{drawn} exp(s_j) / pi_j
is unbiased for sum_j exp(s_j). For the in-batch mixture it also gives ``pool_log_pi``: the same
quantity for each batch positive, per query (-inf where the sampler could not have drawn it), and
with a margin ``drop``: which rows the margin removed from each query's eligible set. "The margin" is every
false-negative filter set (``score_threshold``): --margin, --relative-margin, --max-score; a row is dropped
when its stale score exceeds the lowest of their thresholds, i.e. when any of them drops it.
"""

from __future__ import annotations

import itertools
import math

import torch

from negminer.samplers.gumbel import ReplacementStream, TopKStream
from negminer.types import Batch, Draw

NEG_INF = -math.inf
NOISE_BLOCK = 1 << 20  # candidates per RNG call of a streaming pass


class Sampler:
    """Base: ``sample`` proposes negatives; ``update`` sees the fresh embeddings after the step."""

    name = "base"
    k = 0
    needs_store = True
    all_targets = False  # True: every target is a negative (the trainer encodes them all; samplers/all.py)
    shared = False  # --share-negatives: every query scores every query's draws, so each query needs its own noise

    def __init__(self, k: int = 0, margin: float | None = None, sample_temperature: float | None = None,
                 replacement: bool = False, relative_margin: float | None = None, max_score: float | None = None):
        self.k, self.margin, self.sample_temperature, self.replacement = k, margin, sample_temperature, replacement
        self.relative_margin, self.max_score = relative_margin, max_score
        self.want_log_z = False  # set by the trainer when the loss needs Draw.log_z
        self.last_stats: dict = {}

    @classmethod
    def from_config(cls, cfg, common: dict) -> "Sampler":
        """The sampler with its options from a TrainConfig (``common``: margin, relative margin, max score,
        sampling temperature, replacement)."""
        return cls(cfg.num_negatives, **common)

    def setup(self, store, model, step: int, encode=None) -> None:
        """Called once before training (and after resume): build caches and indexes."""

    def sample(self, q: torch.Tensor, batch: Batch, store) -> Draw:
        raise NotImplementedError

    def update(self, batch: Batch, draw: Draw, model, store, step: int, encode=None) -> None:
        """After the optimiser step and the write-back (``step`` = the next step's index): the sampler's own
        bookkeeping (the streaming queue). Re-encoding is the refreshers' job (refreshers/)."""

    def pool_rows(self, store) -> torch.Tensor | None:
        """The store rows the sampler reads, for the refreshers (None: all)."""
        return None

    def candidates(self, store, q: torch.Tensor | None = None) -> torch.Tensor | None:
        """The store rows the sampler draws from (None: all; [M] shared by the queries, or with ``q`` [B, d]
        given, [B, M] per query, -1 padding, for samplers whose candidates depend on the query)."""
        return self.pool_rows(store)

    def pool_size(self, store, n: int = 0) -> int:
        """How many of the ``n`` targets the sampler draws from (for option checks)."""
        return store.n if store is not None else n

    def proposal(self, q: torch.Tensor, batch: Batch, store) -> torch.Tensor:
        """log Q [B, N] of the first draw over all targets (diagnostics; small N only); excluded rows -inf."""
        raise NotImplementedError

    def state(self) -> tuple[dict, dict]:
        """Checkpoint state: (tensors, JSON)."""
        return {}, {}

    def load_state(self, tensors: dict, meta: dict) -> None:
        pass

    def scale(self, batch: Batch) -> float:
        return 1.0 / self.sample_temperature if self.sample_temperature else batch.loss_scale

    @property
    def filters(self) -> bool:
        """Whether any false-negative filter is set (margin, relative margin, max score)."""
        return self.margin is not None or self.relative_margin is not None or self.max_score is not None

    def threshold(self, s_pos: torch.Tensor) -> torch.Tensor | None:
        """``score_threshold`` with this sampler's filters (None: none set)."""
        return score_threshold(s_pos, self.margin, self.relative_margin, self.max_score)

    def margin_over(self, q: torch.Tensor, batch: Batch) -> torch.Tensor | None:
        """[B] score above which a candidate is dropped (likely an unlabelled positive): the lowest threshold of
        the filters set (``score_threshold``) from the positive's score; None without filters."""
        if not self.filters:
            return None
        return self.threshold((q.float() * batch.pos_emb.to(q.device).float()).sum(-1))

    def margin_drop(self, q: torch.Tensor, batch: Batch, store, cand: torch.Tensor | None = None):
        """``Draw.drop``: rows [M] -> [B, M] bool, True where the margin removed the row from query i's eligible
        set (its stale score, as the pass computes it, above ``margin_over``); rows outside the sampler's
        candidates ``cand`` are never dropped (in-batch-only terms). None without a margin."""
        over = self.margin_over(q, batch)
        if over is None:
            return None
        over = over.float().cpu()

        def drop(rows: torch.Tensor) -> torch.Tensor:
            rows = rows.reshape(-1).cpu()
            out = store.scores(q, rows).cpu() > over.unsqueeze(1)
            if cand is not None:
                out &= torch.isin(rows, cand.cpu()).unsqueeze(0)
            return out
        return drop


def score_threshold(s_pos: torch.Tensor, margin: float | None = None, relative_margin: float | None = None,
                    max_score: float | None = None) -> torch.Tensor | None:
    """Score above which a candidate is dropped as a likely false negative, from the positive's score ``s_pos``
    (any shape; float32): the lowest of the thresholds set, so that a candidate is dropped when any filter drops it:
      * ``margin`` (absolute): positive - margin;
      * ``relative_margin`` R (sentence-transformers' relative_margin, NV-Retriever's TopK-PercPos):
        positive - |positive| x R, i.e. positive x (1 - R) for a positive score >= 0 (sentence-transformers
        takes |positive| so that a negative positive score does not raise the threshold);
      * ``max_score``: the constant max_score.
    None when none is set."""
    s_pos = s_pos.float()
    out = None
    for t in ((s_pos - margin) if margin is not None else None,
              (s_pos - s_pos.abs() * relative_margin) if relative_margin is not None else None,
              torch.full_like(s_pos, max_score) if max_score is not None else None):
        if t is not None:
            out = t if out is None else torch.minimum(out, t)
    return out


def stream_draw(sampler: Sampler, q: torch.Tensor, batch: Batch, store, rows: torch.Tensor | None = None,
                rows_sorted: bool = True, selection: str = "sample") -> Draw:
    """Draw k negatives per query from softmax(stale scores / tau_s) over ``rows`` of the store (all
    if None) in one streaming pass; also ``pool_log_pi`` of the batch positives, and ``log_z`` when
    the sampler was asked for it. ``selection='topk'``: the exact top-k, no weights."""
    dev = store.scoring_device
    b, k, scale = len(q), sampler.k, sampler.scale(batch)
    ex_q, ex_p = batch.excl.to(dev).positions(None if rows is None else rows.to(dev), sorted_cand=rows_sorted)
    # the batch positives, as (query, position) pairs to watch, sorted by position
    pr = batch.pos_rows.to(dev)
    if rows is None:
        wpos = pr
    else:
        r = rows.to(dev)
        srt, back = (r, None) if rows_sorted else r.sort()
        i = torch.searchsorted(srt, pr).clamp(max=max(len(srt) - 1, 0))
        found = srt[i] == pr if len(srt) else torch.zeros_like(pr, dtype=torch.bool)
        wpos = torch.where(found, i if back is None else back[i], torch.full_like(i, -1))
    order = wpos.argsort()
    order = order[wpos[order] >= 0]  # batch positives among the candidates, by position
    watch = (torch.arange(b, device=dev).repeat(len(order)), wpos[order].repeat_interleave(b))  # (query i, position)
    widx = watch[0] * b + order.repeat_interleave(b)  # into [B, B]: query i, positive of query j
    lz_scales = (batch.loss_scale,) if sampler.want_log_z else ()
    g, d = batch.gen(dev), batch.dist if batch.dist is not None else getattr(store, "dist", None)
    sharded = d is not None and d.on
    replacement = sampler.replacement and selection == "sample"
    # shared negatives: a query's estimate uses the other queries' thresholds, so their noise must be
    # independent of its own (the stride-1 windows of one array are shifted copies): a window per query
    independent = sampler.shared and not replacement and selection == "sample"
    if sharded and replacement:  # each rank draws from its shard with its own noise; the shard pick is shared
        seeds = torch.randint(2**62, (2,), generator=g, device=dev).tolist()
        pick = torch.Generator(device=dev).manual_seed(seeds[0])
        g = torch.Generator(device=dev).manual_seed(seeds[1] + d.rank)
    if replacement:
        acc = ReplacementStream(b, k, g, dev, scale=scale, log_z_scales=lz_scales, watch=watch)
    else:
        acc = TopKStream(b, k, g, dev, noise=selection == "sample", independent=independent, log_z_scales=lz_scales,
                         watch=watch)
    over = sampler.margin_over(q.to(dev), batch)
    m = store.n if rows is None else len(rows)
    chunk = store.chunk_size()
    if independent:  # one block (a [B, chunk] noise array) per chunk, of bounded size
        chunk = min(chunk, max(4096, (1 << 22) // max(1, b)))
    blocks = _pass_blocks(m, chunk, _mine(store, rows, rows_sorted, d) if sharded else slice(0, m),
                          one_per_chunk=independent)
    spans = [sp for _, _, cs in blocks for sp in cs]
    starts = torch.tensor([s for s, _ in spans] + [spans[-1][1] if spans else 0], device=dev)
    ex_b = torch.searchsorted(ex_p, starts).tolist()            # the exclusion pairs of each chunk
    w_b = torch.searchsorted(watch[1], starts).tolist()          # the watched pairs of each chunk
    chunks = store.score_chunks(q, rows, spans=spans)
    i = 0
    for bs, be, cs in blocks:
        if isinstance(acc, TopKStream):
            acc.pass_noise(bs, be - bs, cs[0][0] if cs else bs, cs[-1][1] if cs else bs)
        for start, scores in itertools.islice(chunks, len(cs)):
            acc.watch_span = (w_b[i], w_b[i + 1])
            acc.add(scores, start, scale, pairs=(ex_q[ex_b[i]:ex_b[i + 1]], ex_p[ex_b[i]:ex_b[i + 1]]), over=over)
            i += 1
    if sharded:
        acc.merge(d, pick) if replacement else acc.merge(d)
    pos, log_pi, mask = acc.result()
    ids = pos if rows is None else rows.to(dev)[pos]
    ids = ids.masked_fill(mask, 0)
    pool = None
    if log_pi is not None:
        logits = torch.full((b * b,), NEG_INF, device=dev)
        logits[widx] = acc.watched  # recorded before the pass's exclusions: a query never draws its excluded rows
        logits = logits.view(b, b).masked_fill(batch.excl.contains(pr.unsqueeze(0).expand(b, -1)).to(dev), NEG_INF)
        pool = acc.log_pi_of(logits, _drawn(ids, mask, pr))
    log_z = acc.log_z[batch.loss_scale].cpu() if sampler.want_log_z else None
    cross = None if log_pi is None else _cross(sampler, q, batch, store, acc, ids, mask, rows)
    return Draw(ids.cpu(), mask.cpu(), None if log_pi is None else log_pi.cpu(),
                None if pool is None else pool.cpu(), log_z, cross, sampler.margin_drop(q, batch, store, rows))


def _mine(store, rows: torch.Tensor | None, rows_sorted: bool, d) -> slice:
    """The candidates this rank scores: a share of them, or those whose rows it holds (a sharded store)."""
    m = store.n if rows is None else len(rows)
    if not getattr(store, "sharded", False):
        return d.share(m)
    if rows is None:
        return slice(store.lo, store.hi)
    if not rows_sorted:
        raise ValueError("a sharded store is scored over sorted candidate rows only")
    lo, hi = torch.searchsorted(rows.cpu(), torch.tensor([store.lo, store.hi])).tolist()
    return slice(lo, hi)


def _pass_blocks(m: int, chunk: int, mine: slice, one_per_chunk: bool = False) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """The noise blocks of a pass over m candidates, (start, end, this rank's chunks in it): one RNG call
    per block of about 2^20 candidates (or per chunk), whole chunks each; a rank (torchrun) scores only ``mine``."""
    block = chunk if one_per_chunk else chunk * max(1, NOISE_BLOCK // chunk)
    out = []
    for bs in range(0, m, block):
        be = min(m, bs + block)
        lo, hi = max(bs, mine.start), min(be, mine.stop)
        out.append((bs, be, [(s, min(hi, s + chunk)) for s in range(lo, hi, chunk)]))
    return out


def _cross(sampler, q, batch, store, acc, ids, mask, cand):
    """Draw.cross of a streaming draw: the stale logits of any rows for every query (masked as in the
    pass: exclusions, margin, rows outside the candidates) through the pass's thresholds."""
    def cross(rows: torch.Tensor) -> torch.Tensor:
        dev = ids.device
        rows = rows.to(dev)
        s = q.float().to(dev) @ store.embeddings(rows).to(dev).T                       # [B, M]
        bad = batch.excl.contains(rows.cpu().expand(len(q), -1)).to(dev)
        over = sampler.margin_over(q.to(dev), batch)
        if over is not None:
            bad |= s > over.unsqueeze(1)
        if cand is not None:
            bad |= ~torch.isin(rows, cand.to(dev)).unsqueeze(0)
        logits = (s * sampler.scale(batch)).masked_fill(bad, NEG_INF)
        return acc.log_pi_of(logits, _drawn(ids, mask, rows)).cpu()
    return cross


def dense_draw(sampler: Sampler, q: torch.Tensor, batch: Batch, cand: torch.Tensor, scores: torch.Tensor,
               drop=None) -> Draw:
    """The same draw over per-query candidates (``cand`` [B, M] rows, ``scores`` [B, M], -inf: padding);
    ``drop``: the margin's ``Draw.drop``."""
    b, k, scale = len(q), sampler.k, sampler.scale(batch)
    dense = batch.excl.contains(cand.cpu()).to(scores.device) | torch.isneginf(scores)
    watch_hit = cand.unsqueeze(1) == batch.pos_rows.to(cand.device).view(1, b, 1)       # [B, B, M]
    if sampler.replacement:
        acc = ReplacementStream(b, k, batch.generator, scores.device, scale=scale,
                                log_z_scales=(batch.loss_scale,) if sampler.want_log_z else ())
    else:
        stride = 1 + int(torch.randint(61, (1,), generator=batch.generator))
        acc = TopKStream(b, k, batch.generator, scores.device, stride=stride,
                         log_z_scales=(batch.loss_scale,) if sampler.want_log_z else ())
    acc.add(scores.clone(), 0, scale, dense=dense, over=sampler.margin_over(q, batch))
    pos, log_pi, mask = acc.result()
    ids = cand.gather(1, pos).masked_fill(mask, 0)
    logits = (scores.float() * scale).masked_fill(dense, NEG_INF)
    over = sampler.margin_over(q, batch)
    if over is not None:
        logits = logits.masked_fill(scores > over.unsqueeze(1), NEG_INF)
    pool_logits = torch.where(watch_hit, logits.unsqueeze(1), torch.full_like(watch_hit, NEG_INF, dtype=logits.dtype))
    pool = acc.log_pi_of(pool_logits.amax(2), _drawn(ids, mask, batch.pos_rows.to(ids.device)))
    log_z = acc.log_z[batch.loss_scale].cpu() if sampler.want_log_z else None
    return Draw(ids.cpu(), mask.cpu(), log_pi.cpu(), pool.cpu(), log_z, drop=drop)


def _drawn(ids: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """[B, m]: rows[j] is among query i's usable draws."""
    return ((ids.unsqueeze(2) == rows.view(1, 1, -1)) & ~mask.unsqueeze(2)).any(1)
