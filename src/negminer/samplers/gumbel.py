"""Sampling a softmax over many candidates in one streaming pass, with the weights that make the
sampled softmax unbiased.

Without replacement: Gumbel-top-k (Gumbel 1954; Kool, van Hoof, Welling, "Stochastic Beams and
Where to Find Them", ICML 2019): the k largest keys l_j + G_j, G_j ~ Gumbel(0, 1) i.i.d., are k
draws without replacement from softmax(l). With kappa the (k+1)-th largest key, the inclusion
probability of a drawn j given kappa is (Kool, van Hoof, Welling, "Estimating Gradients for
Discrete Random Variables by Sampling without Replacement", ICLR 2020; priority sampling)

    pi_j = P(l_j + G_j > kappa) = 1 - exp(-exp(l_j - kappa)),

and sum_{j drawn} exp(s_j) / pi_j is unbiased for sum_j exp(s_j). (k q_j, the old weight, is not.)
For a candidate that was not drawn (an in-batch target, in a mixture with another pool), the
threshold is the k-th key instead of kappa (``TopKStream.log_pi_of``).

With replacement: k independent draws; the expected count of j is k q_j = k exp(l_j - log Z).

One pass over chunks of scores: a running top-(k+1) of keys (rows whose chunk maximum cannot beat
their current (k+1)-th key skip the top-k), a running logsumexp when log Z is needed, and for
draws with replacement a per-chunk inverse-CDF draw merged across chunks by weighted reservoir
sampling (slot m keeps its draw with probability Z_old / (Z_old + Z_chunk)); nothing of shape
[B, N] is held, and no k noise arrays.

Noise: a pass draws n + (B - 1) s uniform numbers (in blocks, ``pass_noise``) and query b reads
the window starting at b s (a strided view, no copy). Within a query the noise is i.i.d., so each
query's draw has exactly the Gumbel-top-k law, and the RNG cost is per target, not per (query,
target). Queries share values at shifted positions, so their draws are not independent of each
other: a query's own estimate does not care, but shared negatives do (each query weighs the other
queries' draws by their thresholds, which must not depend on its own noise), so with
``independent=True`` each query reads a window of its own (B x n numbers per pass).

Example::

    acc = TopKStream(b=64, k=8, generator=g)
    for start, scores in chunks:                 # scores [B, c] = q . e in any float dtype
        acc.add(scores, start, scale=20.0)
    pos, log_pi, mask = acc.result()             # [B, k] positions, log inclusion probabilities
"""

from __future__ import annotations

import math

import torch

from negminer.samplers import kernel

NEG_INF = -math.inf
_NO_ROWS, _NO_VALUES = torch.zeros(0, dtype=torch.long), torch.zeros(0)  # empty kernel arguments, made once


def gumbel_noise(shape, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """i.i.d. Gumbel(0, 1) noise (u = 0 gives -inf: never drawn)."""
    u = torch.rand(shape, generator=generator, device=device)
    return u.log_().neg_().log_().neg_()


def log_inclusion(logits: torch.Tensor, kappa: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(-exp(l - kappa))), stable; kappa [B], or one per logit (-inf: everything is drawn,
    log pi = 0)."""
    d = logits - (kappa.unsqueeze(-1) if kappa.dim() < logits.dim() else kappa)
    d.masked_fill_(torch.isnan(d), NEG_INF)  # -inf - -inf: not a candidate
    exact = torch.log(-torch.expm1(-torch.exp(d.clamp(max=50.0))))
    return torch.where(d < -20.0, d, exact)


def gumbel_topk(logits: torch.Tensor, k: int, generator: torch.Generator | None = None,
                replacement: bool = False) -> torch.Tensor:
    """Indices [B, k] drawn from softmax(logits [B, M]) (small M; -inf never drawn if enough are finite)."""
    if not replacement:
        return (logits + gumbel_noise(logits.shape, generator, logits.device)).topk(k, dim=-1).indices
    u = torch.rand(logits.shape[0], k, generator=generator, device=logits.device, dtype=torch.float64)
    cdf = logits.double().softmax(-1).cumsum(-1)
    return torch.searchsorted(cdf, u * cdf[:, -1:]).clamp(max=logits.shape[-1] - 1)


class _Stream:
    """Shared parts: logits of a chunk with exclusions and margin applied, running log Z, watched pairs."""

    def __init__(self, b: int, k: int, generator: torch.Generator | None, device=None, log_z_scales=(),
                 watch: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.b, self.k, self.g = b, k, generator
        self.device = torch.device(device or "cpu")
        self.log_z = {s: torch.full((b,), NEG_INF, device=self.device) for s in log_z_scales}
        self.watch = watch  # (query, position) pairs sorted by position; their logits are recorded
        self.watched = None if watch is None else torch.full((len(watch[0]),), NEG_INF, device=self.device)
        self.watch_span = None  # (lo, hi) of the watched pairs in the next chunk, when the caller knows it
        self.flat_noise = None  # (start, flat noise) shared by the chunks of one pass, see TopKStream.pass_noise
        self._ws: dict[str, torch.Tensor] = {}

    def buffer(self, name: str, c: int, dtype=torch.float32) -> torch.Tensor:
        """A reused contiguous [B, c] workspace: fresh multi-MB tensors per chunk cost page faults
        that take longer than the arithmetic."""
        buf = self._ws.get(name)
        if buf is None or buf.numel() < self.b * c or buf.dtype != dtype:
            buf = self._ws[name] = torch.empty(self.b * c, dtype=dtype, device=self.device)
        return buf[: self.b * c].view(self.b, c)

    @staticmethod
    def _mask(x: torch.Tensor, start: int, pairs, dense, over: torch.Tensor | None, scores):
        if pairs is not None and len(pairs[0]):
            x[pairs[0], pairs[1] - start] = NEG_INF
        if dense is not None:
            x.masked_fill_(dense, NEG_INF)
        if over is not None:  # the margin: scores above (positive - margin)
            x.masked_fill_(scores > over.unsqueeze(1), NEG_INF)
        return x

    def merge(self, d) -> None:
        """The ranks' partial log Z and watched logits (each rank saw its shard) -> those of all candidates."""
        for acc in self.log_z.values():
            acc.copy_(d.stack(acc).logsumexp(0))
        if self.watched is not None:
            d.max_(self.watched)

    def _watch_span(self, start: int, c: int) -> tuple[int, int]:
        """(lo, hi): the watched pairs of candidates start..start+c-1."""
        if self.watch_span is not None:
            return self.watch_span
        return tuple(torch.searchsorted(self.watch[1], torch.tensor([start, start + c], device=self.watch[1].device)).tolist())

    def _kernel_mark(self, scores, start, scale, pairs) -> bool:
        wq, wp, out = _NO_ROWS, _NO_ROWS, _NO_VALUES
        if self.watch is not None:
            lo, hi = self._watch_span(start, scores.shape[1])
            wq, wp, out = self.watch[0][lo:hi], self.watch[1][lo:hi], self.watched[lo:hi]
        xq, xp = pairs if pairs is not None else (_NO_ROWS, _NO_ROWS)
        return kernel.mark(scores, start, scale, wq, wp, out, xq, xp)

    def _fused(self, scores, start, scale, pairs, dense, over, skip=None) -> bool:
        """Watched logits, exclusions and each log Z (but ``skip``'s) of this chunk in the compiled kernels
        (a margin or dense exclusions: False, the torch ops do it)."""
        if dense is not None or over is not None or scores.device.type != "cpu" or kernel.get() is None:
            return False
        if not self._kernel_mark(scores, start, scale, pairs):
            return False
        work = self.buffer("work", scores.shape[1])
        return all(kernel.softmax_chunk(scores, s, acc, work) for s, acc in self.log_z.items() if s != skip)

    def _common(self, scores, start, pairs, dense, over, scale, skip=None):
        for s, acc in self.log_z.items():
            if s != skip:
                x = self.buffer("lse", scores.shape[1]).copy_(scores).mul_(s)  # in fp32: bf16 logits are 0.25 apart at 60
                lz = self._mask(x, start, pairs, dense, over, scores).logsumexp(1)
                torch.logaddexp(acc, lz, out=acc)
        if self.watch is not None:
            lo, hi = self._watch_span(start, scores.shape[1])
            if hi > lo:
                qi, pos = self.watch[0][lo:hi], self.watch[1][lo:hi] - start
                v = scores[qi, pos].float() * scale
                if over is not None:
                    v = v.masked_fill(scores[qi, pos] > over[qi], NEG_INF)
                if dense is not None:
                    v = v.masked_fill(dense[qi, pos], NEG_INF)
                self.watched[lo:hi] = v


class TopKStream(_Stream):
    """Gumbel-top-k without replacement (``noise=False``: the exact top-k, no weights)."""

    def __init__(self, b, k, generator=None, device=None, noise: bool = True, stride: int = 1, independent: bool = False,
                 **kw):
        super().__init__(b, k, generator, device, **kw)
        self.noise, self.stride, self.independent = noise, stride, independent
        self.keys = torch.full((b, k + 1), NEG_INF, device=self.device)
        self.logits = torch.full((b, k + 1), NEG_INF, device=self.device)
        self.pos = torch.zeros((b, k + 1), dtype=torch.long, device=self.device)

    def pass_noise(self, start: int, length: int, lo: int | None = None, hi: int | None = None) -> None:
        """Draw the noise of candidates start..start+length-1 at once (one RNG call for many chunks):
        query b reads flat[b * stride + j - start] for candidate j, so within a query every candidate
        has its own value. ``lo``..``hi``: keep only what candidates lo..hi-1 read (a rank's shard under
        torchrun); their values, and the generator's state after, are those of the whole pass."""
        if self.noise and self.independent:  # a window of ``length`` per query: B x length values, all drawn
            self.stride = length  # (under torchrun every rank draws the whole block: the generators stay equal)
            flat = kernel.gumbel(self.b * length, self.g) if self.device.type == "cpu" else None
            self.flat_noise = (start, length, gumbel_noise(self.b * length, self.g, self.device) if flat is None else flat)
        elif self.noise:
            lo, hi = (start, start + length) if lo is None else (lo, hi)
            tail = (self.b - 1) * self.stride
            flat = kernel.gumbel(hi - lo + tail, self.g, lo - start) if self.device.type == "cpu" else None
            if flat is None:
                flat = gumbel_noise(length + tail, self.g, self.device)[lo - start: hi + tail - start]
            self.flat_noise = (lo, hi - lo, flat)

    def _noise(self, start: int, c: int) -> tuple[torch.Tensor, int]:
        """Flat noise and the stride between rows (query b reads flat[b * stride : b * stride + c])."""
        if not self.noise:
            return torch.zeros(c, device=self.device), 0
        if self.flat_noise is not None:
            s0, length, flat = self.flat_noise
            if s0 <= start and start + c <= s0 + length:
                return flat[start - s0:], self.stride
        stride = c if self.independent else self.stride
        return gumbel_noise(c + (self.b - 1) * stride, self.g, self.device), stride

    def add(self, scores: torch.Tensor, start: int = 0, scale: float = 1.0, pairs=None, dense=None, over=None):
        """``scores`` [B, c] for candidate positions start..start+c-1 (a scratch buffer: excluded
        entries are overwritten with -inf); ``pairs`` (query, position) and ``dense`` [B, c] mark
        exclusions; ``over`` [B]: scores above it are dropped (the margin)."""
        c = scores.shape[1]
        flat, stride = self._noise(start, c)
        if kernel.get() is not None and scores.device.type == "cpu":
            if not self._fused(scores, start, scale, pairs, dense, over):
                self._common(scores, start, pairs, dense, over, scale)
                self._mask(scores, start, pairs, dense, over, scores)
            if kernel.topk_chunk(scores, flat, stride, scale, start, self.keys, self.pos, self.logits):
                return
        else:
            self._common(scores, start, pairs, dense, over, scale)
        keys = torch.add(flat.as_strided((self.b, c), (stride, 1)), scores, alpha=scale, out=self.buffer("keys", c))
        self._mask(keys, start, pairs, dense, over, scores)
        hit = (keys.amax(1) > self.keys[:, -1]).nonzero().squeeze(1)
        if not len(hit):
            return
        if len(hit) < self.b:
            keys = torch.index_select(keys, 0, hit, out=self.buffer("hit", c)[: len(hit)])
        top, j = keys.topk(min(self.k + 1, c), dim=1)
        lg = scores[hit.unsqueeze(1), j].float() * scale
        keys2 = torch.cat([self.keys[hit], top], 1)
        best, o = keys2.topk(self.k + 1, dim=1)
        self.keys[hit] = best
        self.logits[hit] = torch.cat([self.logits[hit], lg], 1).gather(1, o)
        self.pos[hit] = torch.cat([self.pos[hit], j + start], 1).gather(1, o)

    def merge(self, d) -> None:
        """Under torchrun each rank streamed its shard of the candidates (noise from ``pass_noise`` with lo, hi):
        the top-(k+1) of the ranks' top-(k+1) keys is the pass over all of them, the same draw."""
        super().merge(d)
        keys, logits, pos = (torch.cat(d.stack(t).unbind(0), 1) for t in (self.keys, self.logits, self.pos))
        self.keys, o = keys.topk(self.k + 1, dim=1)
        self.logits, self.pos = logits.gather(1, o), pos.gather(1, o)

    @property
    def kappa(self) -> torch.Tensor:
        """[B] the (k+1)-th largest key (-inf when at most k candidates are usable)."""
        return self.keys[:, -1]

    def result(self):
        """(positions [B, k], log inclusion probabilities [B, k] or None, mask [B, k])."""
        mask = torch.isneginf(self.keys[:, :-1])
        log_pi = log_inclusion(self.logits[:, :-1], self.kappa) if self.noise else None
        return self.pos[:, :-1], log_pi, mask

    def log_pi_of(self, logits: torch.Tensor, drawn: torch.Tensor) -> torch.Tensor:
        """log inclusion probability of candidates with these logits ([B, m]; -inf: not a candidate);
        ``drawn`` [B, m]: whether the candidate is in the sample. Conditional on the other keys, j is
        drawn iff its key beats tau_j, the k-th largest key among the others: kappa if j was drawn,
        the k-th key overall if not. (Using kappa for both biases a mixture with other pools.)"""
        kth = self.keys[:, -2] if self.k else self.kappa
        return log_inclusion(logits, torch.where(drawn, self.kappa.unsqueeze(1), kth.unsqueeze(1)))


class ReplacementStream(_Stream):
    """k independent draws per query from softmax(scores x scale), in one pass."""

    def __init__(self, b, k, generator=None, device=None, scale: float = 1.0, log_z_scales=(), **kw):
        super().__init__(b, k, generator, device, log_z_scales=tuple({scale, *log_z_scales}), **kw)
        self.scale, self.seed = scale, None
        self.pos = torch.zeros((b, k), dtype=torch.long, device=self.device)
        self.logits = torch.full((b, k), NEG_INF, device=self.device)

    def add(self, scores, start=0, scale=None, pairs=None, dense=None, over=None):
        scale = self.scale if scale is None else scale
        if scale == self.scale and self._fused(scores, start, scale, pairs, dense, over, skip=scale):
            if self.seed is None:  # one draw from the generator per pass; the kernel hashes (seed, row, start, slot)
                self.seed = int(torch.randint(0, 2**62, (1,), generator=self.g, device=self.g.device if self.g else None))
            if not kernel.softmax_chunk(scores, scale, self.log_z[scale], self.buffer("work", scores.shape[1]), start,
                                        self.seed, self.pos, self.logits):  # mark() took these tensors: so does this
                raise RuntimeError("softmax kernel refused a chunk its mark() took (the torch ops would count log Z twice)")
            return
        self._common(scores, start, pairs, dense, over, scale, skip=scale)
        c = scores.shape[1]
        logits = self._mask(self.buffer("logits", c).copy_(scores).mul_(scale), start, pairs, dense, over, scores)
        lz = logits.logsumexp(1, keepdim=True)                       # [B, 1] chunk mass
        before = self.log_z[scale].clone()
        torch.logaddexp(self.log_z[scale], lz.squeeze(1), out=self.log_z[scale])
        ok = torch.isfinite(lz)
        cdf = self.buffer("cdf", c)
        torch.sub(logits, lz.masked_fill(~ok, 0.0), out=cdf).exp_()
        torch.cumsum(cdf, 1, out=cdf)
        u = torch.rand(self.b, self.k, generator=self.g, device=self.device).clamp_(min=1e-12)
        j = torch.searchsorted(cdf, (u * cdf[:, -1:]).contiguous()).clamp_(max=scores.shape[1] - 1)
        # slot m takes the chunk's draw with probability Z_chunk / (Z_before + Z_chunk)
        v = torch.rand(self.b, self.k, generator=self.g, device=self.device).log_()
        take = (v < lz - torch.logaddexp(before.unsqueeze(1), lz)) & ok
        self.pos = torch.where(take, j + start, self.pos)
        self.logits = torch.where(take, logits.gather(1, j), self.logits)

    def merge(self, d, generator: torch.Generator | None = None) -> None:
        """Each rank drew k from its shard's softmax; slot m takes rank r's draw with probability Z_r / Z
        (Gumbel-max over the shards' log-partitions, the same ``generator`` state on every rank), so every
        slot is a draw from the softmax over all candidates (Lindgren et al. 2021, section 4)."""
        lz, pos, logits = d.stack(self.log_z[self.scale]), d.stack(self.pos), d.stack(self.logits)
        super().merge(d)
        r = (lz.unsqueeze(2) + gumbel_noise(pos.shape, generator, pos.device)).argmax(0, keepdim=True)
        self.pos, self.logits = pos.gather(0, r)[0], logits.gather(0, r)[0]

    def result(self):
        lz = self.log_z[self.scale].unsqueeze(1)
        mask = torch.isneginf(self.logits)
        log_pi = math.log(self.k) + self.logits - lz  # expected count k q_j
        return self.pos, log_pi.masked_fill(mask, NEG_INF), mask

    def log_pi_of(self, logits, drawn=None):
        lz = self.log_z[self.scale].unsqueeze(1)
        out = math.log(self.k) + logits - lz
        return out.masked_fill(torch.isneginf(lz) | torch.isneginf(logits), NEG_INF)  # a query with no candidate
