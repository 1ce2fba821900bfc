"""Tree sampler: exact draws from the softmax over all N cached targets, by bounds and rejection.

Monath, Zaheer, Allen, McCallum, "Improving Dual-Encoder Training through Dynamic Indexes for
Negative Mining", AISTATS 2023. With logits s_j = <q, x_j> / tau_s over the store and a k-means tree
(index/tree.py) whose node n bounds its rows' logits by u_n = (<q, c_n> + ||q|| r_n) / tau_s:

1. Bound every leaf (the tree's internal nodes hold too many rows, and too wide a ball, for their
   bounds to pay in sampling: the ball allows ||q|| r / tau_s nats of slack); per query the ``beam``
   leaves of largest upper mass count_n e^{u_n} are scored exactly, all others form the envelope.
   While the estimated acceptance Z / Z_up of some query is below ``min_accept`` (10%), the beam is
   widened 4x; past 1/``fallback`` of the leaves the bounds are too loose to pay (embeddings that are
   not tightly clustered), and the step draws by one exact streaming pass over the store instead
   (with replacement, exact Z; ``tree_fallback`` = 1 in the log).
2. Propose from the mixture with weights e^{s_j} (exact rows) and count_n e^{u_n} (envelope nodes,
   then a uniform slot of the node); accept an envelope proposal x with probability e^{s_x - u_n}
   (a removed slot, an excluded row or one above the margin: never). Accepted draws are i.i.d. from
   softmax(s) over the usable rows: exact, whatever the beam; the beam only sets the acceptance rate
   (and the bounds stay valid as long as the tree is told of every store write, which it is).
3. Z = Z_exact + Z_env: Z_env is bounded by sum count_n e^{l_n} (lower bounds, live rows less the
   query's exclusions; not a bound with --margin) and sum count_n e^{u_n}, and estimated without bias by Z_env_up x the
   acceptance rate of ``estimate`` envelope-only proposals. Draws are with replacement, so a draw's
   weight is its expected count, log pi_j = log k + s_j - log Z_hat (as uniform and the replacement
   stream give); ``log_z_bounds`` holds [lower, upper] of log Z per query.

A query still short of k accepted draws after ``rounds`` rounds gets masked slots (``tree_short`` in
the log). The store tells the tree which rows each write changed; the tree keeps its bounds valid in
place (index/tree.py). Logged: ``tree_accept`` (acceptance rate), ``tree_logz_gap`` (upper - lower
log Z), ``tree_exact_mass`` (share of Z_hat scored exactly).

Example::  negminer train --negatives tree --num-negatives 64 --tree-beam 64 --refresh auto,nystrom
"""

from __future__ import annotations

import math

import torch

from negminer.index.tree import KMeansTree
from negminer.samplers.base import Draw, Sampler, stream_draw

NEG_INF = -math.inf


class TreeSampler(Sampler):
    name = "tree"

    def __init__(self, k: int, beam: int = 32, branching: int = 16, leaf_size: int = 64, rounds: int = 16,
                 estimate: int = 64, min_accept: float = 0.1, fallback: int = 8, seed: int = 0, **kw):
        kw["replacement"] = True
        super().__init__(k, **kw)
        self.beam, self.rounds, self.estimate, self.min_accept, self.seed = beam, rounds, estimate, min_accept, seed
        self.width, self.fallback = beam, fallback
        self.tree_args = dict(branching=branching, leaf_size=leaf_size, seed=seed)
        self.tree: KMeansTree | None = None
        self._watched = None
        self.log_z_bounds: torch.Tensor | None = None

    # ---- the index ------------------------------------------------------------------------
    def setup(self, store, model, step, encode=None):
        if int(store.age.min()) < 0:
            encode(torch.arange(store.n), step)
        if self.tree is None:
            self.tree = KMeansTree(**self.tree_args).build(store.embeddings, store.n)
        self.tree.bind(store.embeddings)
        if self._watched is not store:
            store.listeners.append(self._changed)
            self._watched = store

    def _changed(self, rows, step):
        if rows is None or self.tree is None:  # the whole store replaced (resume): the checkpoint's tree follows
            return
        self.tree.update(rows, self._watched.embeddings(rows))

    def state(self):
        return ({} if self.tree is None else self.tree.state("tree")), {}

    def load_state(self, tensors, meta):
        if "tree.members" in tensors:
            self.tree = KMeansTree(**self.tree_args).load_state(tensors, "tree")

    # ---- drawing --------------------------------------------------------------------------
    def _split(self, dot, rad, slots, live, width):
        """Per query the ``width`` leaves of largest upper mass (scored exactly) [B, W], and the envelope of
        all other live leaves: (leaf, slots, live, u, l) each [B, L] (u, l = -inf where not in it)."""
        b, n_leaves = dot.shape
        ok = (live > 0).expand(b, -1)
        up = (slots.float().log() + dot + rad).masked_fill(~ok, NEG_INF)
        top = up.topk(min(width, n_leaves), dim=1)
        rest = ok.clone()
        rest.scatter_(1, top.indices, False)
        leaves = top.indices.masked_fill(torch.isneginf(top.values), -1)
        env = (torch.arange(n_leaves).expand(b, -1), slots.expand(b, -1), live.expand(b, -1),
               (dot + rad).masked_fill(~rest, NEG_INF), (dot - rad).masked_fill(~rest, NEG_INF))
        return leaves, env

    def _usable(self, q, rows, batch, s):
        """False where a row is removed, excluded for its query or above the margin."""
        bad = (rows < 0) | batch.excl.contains(rows.clamp(min=0))
        over = self.margin_over(q, batch)
        if over is not None:
            bad |= s > over.unsqueeze(1)
        return ~bad

    def sample(self, q, batch, store) -> Draw:
        t, b, k = self.tree, len(q), self.k
        q = q.detach().float().cpu()
        scale = self.scale(batch)
        qs = q * scale
        qn = qs.norm(dim=1, keepdim=True)
        g = batch.generator
        nex = torch.bincount(batch.excl.qi, minlength=b).unsqueeze(1) if len(batch.excl.qi) else torch.zeros(b, 1)
        lse = lambda x: torch.logsumexp(x, dim=1)  # noqa: E731
        width, n_leaves, d_ = self.beam, len(t.members), t.depth
        dot, rad = qs @ t.center[d_].T, qn * t.radius[d_]           # every leaf's bounds: [B, leaves]
        slots, live = t.prefix[1:] - t.prefix[:-1], t.live
        while True:  # widen until the estimated acceptance Z / Z_up reaches min_accept for every query
            leaves, (e_lo, e_slots, e_live, e_u, e_l) = self._split(dot, rad, slots, live, width)
            rows = t.members[leaves.clamp(min=0)].masked_fill((leaves < 0).unsqueeze(-1), -1).flatten(1)
            raw = torch.einsum("bd,bmd->bm", q, store.embeddings(rows.clamp(min=0).flatten()).view(*rows.shape, -1))
            s_ex = (raw * scale).masked_fill(~self._usable(q, rows, batch, raw), NEG_INF)
            env_up = e_slots.float().log() + e_u
            env_lo = (e_live - nex).clamp(min=0).float().log() + e_l
            z_ex, z_env_up = lse(s_ex), lse(env_up)
            lo_b, up_b = lse(torch.stack([z_ex, lse(env_lo)], 1)), lse(torch.stack([z_ex, z_env_up], 1))
            est = lambda: self._log_z(q, batch, store, scale, env_up, e_lo, e_slots, e_u, z_ex, z_env_up, lo_b, g)  # noqa: E731
            accept = (est() - up_b).exp()[torch.isfinite(up_b)]
            if width >= n_leaves or not len(accept) or float(accept.min()) >= self.min_accept:
                break
            width *= 4
            if width * self.fallback > n_leaves:  # bounds too loose to pay: one exact pass over the store
                self.width, self.log_z_bounds = width, None
                d = stream_draw(self, q, batch, store, None)
                self.last_stats = {"tree_fallback": 1, "tree_width": width}
                return d
        self.width = width
        log_z = est()  # a fresh estimate: the one that chose the width is biased by that choice
        self.log_z_bounds = torch.stack([lo_b, up_b], 1)
        # rejection sampling from the mixture of exact rows and envelope nodes
        ids = torch.zeros(b, k, dtype=torch.long)
        got = torch.zeros(b, dtype=torch.long)
        logits = torch.cat([s_ex, env_up], 1)
        p_acc = (log_z - up_b).exp().clamp(min=1e-3)
        proposed = accepted = 0
        for _ in range(self.rounds):
            need = (k - got).clamp(min=0)
            if not bool(need.any()):
                break
            m = int(min(4096, math.ceil(float((need / p_acc).max()) * 1.25) + 4))  # [B, m, d] gathered at once
            active = need > 0
            pick = _categorical(logits, m, g)                                  # [B, m] into logits
            from_ex = pick < s_ex.shape[1]
            r_ex = rows.gather(1, pick.clamp(max=s_ex.shape[1] - 1))
            ok_env, r_env = self._propose(q, batch, store, scale, env_up, e_lo, e_slots, e_u, m, g, active,
                                          pick=(pick - s_ex.shape[1]).clamp(min=0))
            r = torch.where(from_ex, r_ex, r_env)
            ok = (from_ex | ok_env) & active.unsqueeze(1)
            proposed += int(active.sum()) * m
            accepted += int(ok.sum())
            rank = ok.long().cumsum(1) - 1 + got.unsqueeze(1)
            put = ok & (rank < k)
            qi = torch.arange(b).unsqueeze(1).expand_as(put)
            ids[qi[put], rank[put]] = r[put]
            got = (got + ok.sum(1)).clamp(max=k)
        mask = torch.arange(k).unsqueeze(0) >= got.unsqueeze(1)
        ids = ids.masked_fill(mask, 0)
        s_draw = (torch.einsum("bd,bkd->bk", q, store.embeddings(ids.flatten()).view(b, k, -1)) * scale)
        log_k = math.log(k)
        log_pi = (log_k + s_draw - log_z.unsqueeze(1)).masked_fill(mask, NEG_INF)
        pool = self._cross_logits(q, batch, store, scale, batch.pos_rows)
        pool = log_k + pool - log_z.unsqueeze(1)
        z_for_loss = log_z if self.sample_temperature is None else None

        def cross(rws):
            return log_k + self._cross_logits(q, batch, store, scale, rws) - log_z.unsqueeze(1)

        self.last_stats = {"tree_accept": accepted / max(proposed, 1), "tree_width": self.width, "tree_fallback": 0,
                           "tree_logz_gap": float((up_b - lo_b)[torch.isfinite(up_b)].mean()) if bool(torch.isfinite(up_b).any()) else 0.0,
                           "tree_exact_mass": float((z_ex - log_z).exp()[torch.isfinite(log_z)].mean()) if bool(torch.isfinite(log_z).any()) else 1.0,
                           "tree_short": int(mask.sum())}
        return Draw(ids, mask, log_pi, pool, z_for_loss, cross)

    def _log_z(self, q, batch, store, scale, env_up, e_lo, e_slots, e_u, z_ex, z_env_up, lo_b, g):
        """log Z_hat [B]: Z_exact + Z_env_up x the acceptance rate of ``estimate`` envelope-only proposals
        (unbiased for Z); the lower bound where no estimate is possible."""
        z_env_hat = torch.full((len(q),), NEG_INF)
        has_env = torch.isfinite(z_env_up)
        if self.estimate and bool(has_env.any()):
            acc = self._propose(q, batch, store, scale, env_up, e_lo, e_slots, e_u, self.estimate, g, has_env)[0]
            rate = acc.float().mean(1)
            z_env_hat = torch.where(rate > 0, z_env_up + rate.clamp(min=1e-30).log(), torch.full_like(rate, NEG_INF))
        log_z = torch.logsumexp(torch.stack([z_ex, z_env_hat], 1), dim=1)
        return torch.where(torch.isfinite(log_z), log_z, lo_b)

    def _propose(self, q, batch, store, scale, env_up, e_lo, e_slots, e_u, m, g, active, pick=None):
        """``m`` envelope proposals per query (or the envelope entries ``pick`` [B, m]): (accepted, rows)."""
        b = len(q)
        if env_up.shape[1] == 0:
            return torch.zeros(b, m, dtype=torch.bool), torch.zeros(b, m, dtype=torch.long)
        if pick is None:
            pick = _categorical(env_up.masked_fill(~active.unsqueeze(1), 0.0), m, g)
        slots = e_slots.gather(1, pick)
        u = (torch.rand(pick.shape, generator=g) * slots).long().clamp(max=(slots - 1).clamp(min=0))
        pos = self.tree.prefix[e_lo.gather(1, pick)] + u
        leaf = torch.searchsorted(self.tree.prefix, pos, right=True) - 1
        rows = self.tree.members[leaf.clamp(max=len(self.tree.members) - 1), pos - self.tree.prefix[leaf]]
        raw = torch.einsum("bd,bmd->bm", q, store.embeddings(rows.clamp(min=0).flatten()).view(b, m, -1))
        s = raw * scale
        bound = e_u.gather(1, pick)
        acc = torch.rand(pick.shape, generator=g).log() < (s - bound)
        acc &= self._usable(q, rows, batch, raw) & torch.isfinite(bound) & active.unsqueeze(1)
        return acc, rows.clamp(min=0)

    def _cross_logits(self, q, batch, store, scale, rows):
        """[B, M] logits of ``rows`` for every query, -inf where unusable (excluded, margin)."""
        rows = rows.cpu()
        raw = q @ store.embeddings(rows).T
        ok = self._usable(q, rows.expand(len(q), -1), batch, raw)
        return (raw * scale).masked_fill(~ok, NEG_INF)

    def proposal(self, q, batch, store):
        """log Q [B, N] of one draw: the exact softmax over usable rows (small N only)."""
        q = q.detach().float().cpu()
        raw = q @ store.embeddings().T
        rows = torch.arange(store.n).expand(len(q), -1)
        s = (raw * self.scale(batch)).masked_fill(~self._usable(q, rows, batch, raw), NEG_INF)
        return s - torch.logsumexp(s, dim=1, keepdim=True)


def _categorical(logits: torch.Tensor, m: int, g: torch.Generator) -> torch.Tensor:
    """[B, m] i.i.d. indices from softmax(logits) per row (inverse CDF; a row of -inf gives index 0)."""
    p = torch.softmax(logits.masked_fill(torch.isnan(logits), NEG_INF), dim=1)
    p = torch.nan_to_num(p, nan=0.0)
    empty = p.sum(1) <= 0
    p[empty, 0] = 1.0
    cdf = p.cumsum(1)
    u = torch.rand(len(p), m, generator=g) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp(max=p.shape[1] - 1)
