"""Tree sampler: exact draws from the softmax over all N cached targets, by bounds and adaptive rejection.

Monath, Zaheer, Allen, McCallum, "Improving Dual-Encoder Training through Dynamic Indexes for
Negative Mining", AISTATS 2023. With logits s_j = <q, x_j> / tau_s over the store and a k-means tree
(index/tree.py) whose leaf n bounds its rows' logits by u_n = (<q, c_n> + ||q|| r_n) / tau_s, the leaf's
mass M_n = sum_{j in n} e^{s_j} (usable rows only) is bounded by U_n = live_n e^{u_n}. Per query:

1. The envelope starts at U_n for every leaf (one [B, leaves] product with the leaf centres); the
   ``beam`` leaves of largest U_n are scored exactly up front, their U_n replaced by M_n.
2. Adaptive rejection (Gilks and Wild's scheme, over leaves): propose a leaf n with probability
   U_n / sum U, score its rows, accept with probability M_n / U_n and then draw the row with
   probability e^{s_j} / M_n; so an accepted row has probability e^{s_j} / Z: exact, whatever the
   envelope. Every scored leaf's U_n becomes M_n (it stays a valid bound, now tight), so rejections make
   the envelope tighter and later proposals cheaper. Proposals are made in rounds, all of a round
   against the envelope at its start (still exact: each is a trial against a valid envelope).
   Leaves are grouped in blocks of 1024, so a proposal costs a draw over blocks and one within a block,
   and a refinement updates one block's sum.
3. If a query would need more than 1/``fallback`` of the leaves scored, or its beam holds under
   ``min_share`` (1%) of its envelope (bounds too loose to pay: embeddings not clustered tightly enough
   for their balls), the step draws by one exact streaming pass over the store instead (with
   replacement, exact Z; ``tree_fallback`` = 1 in the log).
4. Z = Z_exact (scored leaves) + Z_rest, so Z_exact <= Z <= Z_exact + sum of the unscored leaves' U_n
   (``log_z_bounds``; lower bounds of the unscored leaves would cost another pass over all leaves and
   add little where the tree pays); Z_rest is estimated without bias by U_rest x the mean of M_n / U_n
   over ``estimate`` fresh proposals from the unscored leaves.
   Draws are with replacement, so a draw's weight is its expected count, log pi_j = log k + s_j -
   log Z_hat (as uniform and the replacement stream give); ``log_z_bounds`` holds [lower, upper] of log Z.

Proposal mode (``mode='proposal'``, ``--tree-mode proposal``): where exact sampling does not pay (loose
bounds), the tree is a proposal instead of a rejection envelope, as Monath et al. sample approximately. A
leaf n is drawn with probability Q(n) = w_n / sum w, w_n = live_n e^{<q, c_n> / tau_s} (its centroid mass;
the ``beam`` leaves of largest w_n at their exact mass M_n), then a row j of it with probability e^{s_j} / M_n
(the leaf scored exactly). So Q_j = Q(n) e^{s_j} / M_n is known exactly for every row, log pi_j = log k + log Q_j,
and sum_{draws} e^{s_j} / (k Q_j) is unbiased for Z: the corrected loss stays unbiased, only its variance
depends on how close Q is to the softmax. No fallback, no pass over the store. Since p_j / Q_j = M_n / (Z Q(n))
within a leaf, the step's draws estimate TV(Q, p) = E_Q |p / Q - 1| / 2 (``tree_tv`` in the log). That estimate
sees only the leaves Q draws, so it is low where Q misses mass (1e6 spread clusters: 0.05, where 1,280 draws are
0.37 from the softmax and 1,280 exact draws 0.18): the exact TV is the diagnostics' (``--diagnose-every``;
``proposal()`` gives log Q over every row).

Descend mode (``--tree-mode descend``): proposal mode without its product with every leaf (580K leaves at
2e7 rows). A beam search down the tree (the ``beam`` best nodes per level by upper bound, as index/tree.py's
approximate top-k) gives each query its candidate leaves C_q, scored exactly (masses M_n, total Z_C); a draw takes
a leaf n with probability Q(n) = (1 - tail) 1[n in C_q] M_n / Z_C + tail live_n / N_live (the uniform tail, 0.1,
keeps every row reachable, so the correction stays unbiased), then a row of it exactly: log Q_j = log Q(n) + s_j -
log M_n. Cost per query: beam x b x depth centre products and beam + k tail leaves. (Walking down by centroid mass
instead was tried and dropped: an upper node's centroid, the mean of thousands of rows, says little about where
its mass is, and the draws scattered over ~60 leaves per query, TV ~0.9, on tight clusters.)

A query still short of k accepted draws after ``rounds`` rounds gets masked slots (``tree_short`` in
the log). The store tells the tree which rows each write changed; the tree keeps its bounds valid in
place (index/tree.py). Logged: ``tree_accept`` (acceptance rate of proposals), ``tree_scored`` (leaves
scored per query), ``tree_logz_gap`` (upper - lower log Z), ``tree_exact_mass`` (share of Z_hat scored).

Example::  negminer train --negatives tree --num-negatives 64 --tree-beam 8 --refresh auto,nystrom
           negminer train --negatives tree --tree-mode proposal --num-negatives 64
           negminer train --negatives tree --tree-mode descend --num-negatives 8
"""

from __future__ import annotations

import math

import torch

from negminer.index.tree import KMeansTree
from negminer.samplers.base import Draw, Sampler, stream_draw

NEG_INF = -math.inf
BLOCK = 1024
MODES = ("exact", "proposal", "descend")


class TreeSampler(Sampler):
    name = "tree"

    @classmethod
    def from_config(cls, cfg, common: dict) -> "TreeSampler":
        return cls(cfg.num_negatives, beam=cfg.tree_beam, branching=cfg.tree_branching, leaf_size=cfg.tree_leaf_size,
                   mode=cfg.tree_mode, seed=cfg.seed, **common)

    def __init__(self, k: int, beam: int = 8, branching: int = 16, leaf_size: int = 64, rounds: int = 16,
                 estimate: int = 64, fallback: int = 8, min_share: float = 0.01, max_proposals: int = 32768,
                 mode: str = "exact", tail: float = 0.1, seed: int = 0, **kw):
        if mode not in MODES:
            raise ValueError(f"tree: mode must be one of {', '.join(MODES)}, not {mode!r}")
        kw["replacement"] = True
        super().__init__(k, **kw)
        if not 0 < tail <= 1:
            raise ValueError(f"tree: tail must be in (0, 1], not {tail}")
        self.mode, self.tail = mode, tail
        self.beam, self.rounds, self.estimate, self.fallback, self.seed = beam, rounds, estimate, fallback, seed
        self.max_proposals, self.min_share = max_proposals, min_share
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
    def _usable(self, q, qi, rows, batch, raw):
        """False where a row is removed, excluded for its query ``qi`` or above the margin ([P, m])."""
        bad = (rows < 0) | batch.excl.contains(rows.clamp(min=0), qi.unsqueeze(1))
        over = self.margin_over(q, batch)
        if over is not None:
            bad |= raw > over[qi].unsqueeze(1)
        return ~bad

    def _score(self, q, scale, batch, store, qi, leaf, known=None):
        """Logits [P, m] of the rows of leaf ``leaf[p]`` for query ``qi[p]`` (-inf: unusable) and the rows. Each
        distinct (query, leaf) pair is scored once, pairs in ``known`` (``_score_pairs``' key, logits, rows) not
        again (so a leaf's mass and its row draw read the same scores)."""
        n_l = len(self.tree.members)
        key, inv = (qi * n_l + leaf).unique(return_inverse=True)
        if known is None or not len(known[0]):
            s, mem = self._score_pairs(q, scale, batch, store, key)
            return s[inv], mem[inv]
        kk, ks, km = known
        pos = torch.searchsorted(kk, key).clamp(max=len(kk) - 1)
        hit = kk[pos] == key
        ns, nm = self._score_pairs(q, scale, batch, store, key[~hit])
        w = max(ks.shape[1], ns.shape[1])
        s, mem = torch.full((len(key), w), NEG_INF), torch.full((len(key), w), -1, dtype=torch.long)
        s[hit], mem[hit] = _pad(ks[pos[hit]], w, NEG_INF), _pad(km[pos[hit]], w, -1)
        s[~hit], mem[~hit] = _pad(ns, w, NEG_INF), _pad(nm, w, -1)
        return s[inv], mem[inv]

    def _score_pairs(self, q, scale, batch, store, key):
        """Logits and rows [K, w] of the distinct (query, leaf) pairs ``key`` (query x leaves + leaf). The distinct
        leaves' rows are read once and scored against every query by one product in the store's compute dtype (as
        the exact pass scores them): a leaf drawn by many queries costs one read, and a matmul beats a matvec per
        pair by far more than the unneeded products cost."""
        n_l = len(self.tree.members)
        uq, ul = key // n_l, key % n_l
        lu, linv = ul.unique(return_inverse=True)
        mem = self.tree.members[lu, :max(1, int(self.tree.fill[lu].max()) if len(lu) else 1)]  # [U, w]
        ok = mem >= 0
        pos = torch.zeros(mem.shape, dtype=torch.long)
        pos[ok] = torch.arange(int(ok.sum()))
        raw = self._raw(q, store, mem[ok])                                                 # [B, R]
        raw = raw[uq.unsqueeze(1), pos[linv]] if raw.shape[1] else torch.zeros(len(uq), mem.shape[1])
        mem = mem[linv]                                                                    # [K, w]
        good = self._usable(q, uq, mem, batch, raw)
        return (raw * scale).masked_fill(~good, NEG_INF), mem

    @staticmethod
    def _raw(q, store, rows):
        """[B, M] float32 scores of store ``rows`` for every query, as the store's scoring pass computes them."""
        if len(rows) == 0:
            return torch.zeros(len(q), 0)
        return store.scores(q, rows).float().cpu()

    def _leaves(self):
        """[leaves padded to whole blocks, d + 2] rows (c_n, r_n, log live_n), so that one product with
        (q, ||q||, 1) gives every log U_n (cached per tree version)."""
        t = self.tree
        if getattr(self, "_leaf_cache", (None,))[0] != (id(t), t.version):
            n, nb = len(t.members), -(-len(t.members) // BLOCK)
            d = t.center[t.depth].shape[1]
            aug = getattr(self, "_leaf_cache", (None, None))[1]
            if aug is None or aug.shape != (nb * BLOCK, d + 2):  # else rewritten in place (every step in training)
                aug = torch.zeros(nb * BLOCK, d + 2)
            aug[:n, :d] = t.center[t.depth]
            aug[:n, d] = t.radius[t.depth]
            aug[:, d + 1] = NEG_INF
            aug[:n, d + 1] = t.live.float().log()
            self._leaf_cache = ((id(t), t.version), aug)
        return self._leaf_cache[1]

    def _buffers(self, b: int, n: int):
        """The [B, leaves] envelope and scored mask, kept between steps (fresh 100 MB tensors each step
        cost as much in page faults as the product itself)."""
        buf = getattr(self, "_buf", None)
        if buf is None or buf[0].shape != (b, n):
            self._buf = buf = (torch.empty(b, n), torch.empty(b, n, dtype=torch.bool))
        buf[1].zero_()
        return buf

    def sample(self, q, batch, store) -> Draw:
        if self.mode == "proposal":
            return self._sample_proposal(q, batch, store)
        if self.mode == "descend":
            return self._sample_descend(q, batch, store)
        t, b, k = self.tree, len(q), self.k
        q = q.detach().float().cpu()
        scale = self.scale(batch)
        qs = q * scale
        g = batch.generator
        n_leaves = len(t.members)
        aug = self._leaves()
        nb = len(aug) // BLOCK
        env, scored = self._buffers(b, nb * BLOCK)
        torch.mm(torch.cat([qs, qs.norm(dim=1, keepdim=True), torch.ones(b, 1)], 1), aug.T, out=env)  # log U_n
        env3, scored3 = env.view(b, nb, BLOCK), scored.view(b, nb, BLOCK)
        blk_max, blocks = _block_lse(env3)                        # [B, nb]: all leaves
        rest_blocks = blocks.clone()                              # unscored leaves only
        ref = []                                                  # (query, leaf) pairs scored

        def refine(qi, leaf, s):
            m = torch.logsumexp(s, dim=1)
            env[qi, leaf] = m
            scored[qi, leaf] = True
            key = (qi * nb + leaf // BLOCK).unique()
            bq, bb = key // nb, key % nb
            e = env3[bq, bb]
            blocks[bq, bb] = torch.logsumexp(e, dim=1)
            rest_blocks[bq, bb] = torch.logsumexp(e.masked_fill(scored3[bq, bb], NEG_INF), dim=1)
            ref.append(qi * (nb * BLOCK) + leaf)
            return m

        if self.beam:  # score the beam up front
            top = _topk_by_block(env3, blk_max, min(self.beam, n_leaves))
            ok = torch.isfinite(top.values)
            qi = torch.arange(b).unsqueeze(1).expand_as(top.indices)[ok]
            leaf = top.indices[ok]
            refine(qi, leaf, self._score(q, scale, batch, store, qi, leaf)[0])

        budget = max(1, n_leaves // self.fallback) if self.fallback else math.inf
        up = torch.logsumexp(blocks, dim=1)                       # log of the whole envelope per query
        if self.fallback and self.beam and ref:  # the beam's share of the envelope bounds the acceptance from below;
            kq, kl = ref[0] // (nb * BLOCK), ref[0] % (nb * BLOCK)  # under 1% (spread embeddings): skip the probe
            share = (_scatter_lse(env[kq, kl], kq, b) - up).exp().nan_to_num(0.0)
            if bool((share < self.min_share).any()):
                return self._fall_back(q, batch, store, float(min(self.beam, n_leaves)))
        ids = torch.zeros(b, k, dtype=torch.long)
        s_ids = torch.zeros(b, k)
        got = torch.zeros(b, dtype=torch.long)
        alive = torch.isfinite(up)
        hits, tried = torch.zeros(b), torch.zeros(b)  # acceptance so far per query; the first round probes k
        spent = torch.full((b,), float(min(self.beam, n_leaves)))
        proposed = accepted = 0
        for _ in range(self.rounds if budget == math.inf else 1 << 30):  # the budget ends it when it is finite
            need = (k - got).clamp(min=0) * alive
            if not bool(need.any()):
                break
            rate = ((hits + 0.5) / (tried + 0.5)).clamp(min=1e-6, max=1.0)
            want = torch.ceil(need / rate * 1.25).long() + (need > 0).long() * 2
            if bool((spent + want > budget).any()):  # bounds too loose to pay: one exact pass
                return self._fall_back(q, batch, store, float(spent.mean()))
            want = (want * min(1.0, self.max_proposals / max(1, int(want.sum())))).long().clamp(min=1) * (need > 0)
            m = int(want.max())
            blk = _categorical(blocks, m, g)                                           # [B, m]
            use = torch.arange(m).unsqueeze(0) < want.unsqueeze(1)
            qi = torch.arange(b).unsqueeze(1).expand(b, m)[use]
            blk = blk[use]
            key, inv = (qi * nb + blk).unique(return_inverse=True)
            leaf = blk * BLOCK + _draw_in_rows(env3[key // nb, key % nb], inv, g)
            u_n = env[qi, leaf]
            was = scored[qi, leaf]
            s, mem = self._score(q, scale, batch, store, qi, leaf)
            m_n = refine(qi, leaf, s)
            ok = was | (torch.rand(len(qi), generator=g).log() < m_n - u_n)
            ok &= torch.isfinite(m_n)
            j = _gumbel_argmax(s, g)
            row, s_row = mem.gather(1, j.unsqueeze(1)).squeeze(1), s.gather(1, j.unsqueeze(1)).squeeze(1)
            proposed += len(qi)
            accepted += int(ok.sum())
            n_ok = torch.bincount(qi[ok], minlength=b)
            hits, tried = hits + n_ok, tried + want
            spent += want
            # the accepted draws of query i go to ids[i, got_i ...] in proposal order
            qa, ra, sa = qi[ok], row[ok], s_row[ok]
            first = torch.cumsum(n_ok, 0) - n_ok
            rank = torch.arange(len(qa)) - first[qa] + got[qa]
            put = rank < k
            ids[qa[put], rank[put]], s_ids[qa[put], rank[put]] = ra[put], sa[put]
            got = (got + n_ok).clamp(max=k)
        mask = torch.arange(k).unsqueeze(0) >= got.unsqueeze(1)
        ids = ids.masked_fill(mask, 0)

        key = torch.cat(ref).unique() if ref else torch.zeros(0, dtype=torch.long)
        kq, kl = key // (nb * BLOCK), key % (nb * BLOCK)
        z_ex = _scatter_lse(env[kq, kl], kq, b)
        z_rest_up = torch.logsumexp(rest_blocks, dim=1)
        lse2 = lambda a, c: torch.logsumexp(torch.stack([a, c], 1), dim=1)  # noqa: E731
        lo_b, up_b = z_ex, lse2(z_ex, z_rest_up)  # the scored mass; the scored mass + the others' bounds
        est = self._rest_estimate(q, scale, batch, store, env3, scored3, rest_blocks, z_rest_up, up_b, g)
        log_z = lse2(z_ex, est)
        log_z = torch.where(torch.isfinite(log_z), log_z, lo_b)
        self.log_z_bounds = torch.stack([lo_b, up_b], 1)

        log_k = math.log(k)
        log_pi = (log_k + s_ids - log_z.unsqueeze(1)).masked_fill(mask, NEG_INF)
        pool = log_k + self._cross_logits(q, batch, store, scale, batch.pos_rows) - log_z.unsqueeze(1)
        z_for_loss = log_z if self.sample_temperature is None else None

        def cross(rws):
            return log_k + self._cross_logits(q, batch, store, scale, rws) - log_z.unsqueeze(1)

        fin = torch.isfinite(up_b)
        self.last_stats = {"tree_accept": accepted / max(proposed, 1), "tree_scored": float(spent.mean()),
                           "tree_fallback": 0,
                           "tree_logz_gap": float((up_b - lo_b)[fin].mean()) if bool(fin.any()) else 0.0,
                           "tree_exact_mass": float((z_ex - log_z).exp()[fin].mean()) if bool(fin.any()) else 1.0,
                           "tree_short": int(mask.sum())}
        return Draw(ids, mask, log_pi, pool, z_for_loss, cross, self.margin_drop(q, batch, store))

    def _sample_proposal(self, q, batch, store) -> Draw:
        """--tree-mode proposal: k draws with replacement from Q (a leaf by its centroid mass, the beam's leaves by
        their exact mass; a row within the leaf exactly), each weighted by its exact log k Q_j."""
        t, b, k = self.tree, len(q), self.k
        q = q.detach().float().cpu()
        scale, g = self.scale(batch), batch.generator
        env, blocks, log_w, n_beam, known = self._proposal_env(q, scale, batch, store)
        nb = blocks.shape[1]
        env3 = env.view(b, nb, BLOCK)
        blk = _categorical(blocks, k, g)                                                # [B, k]
        qi = torch.arange(b).unsqueeze(1).expand(b, k).flatten()
        key, inv = (qi * nb + blk.flatten()).unique(return_inverse=True)
        leaf = blk.flatten() * BLOCK + _draw_in_rows(env3[key // nb, key % nb], inv, g)
        s, mem = self._score(q, scale, batch, store, qi, leaf, known)
        m_n = torch.logsumexp(s, dim=1)
        j = _gumbel_argmax(s, g)
        ids, s_ids = mem.gather(1, j.unsqueeze(1)).squeeze(1), s.gather(1, j.unsqueeze(1)).squeeze(1)
        mask = ~torch.isfinite(m_n).view(b, k) | ~torch.isfinite(log_w).unsqueeze(1)
        log_q_leaf = (env[qi, leaf] - log_w[qi]).view(b, k)
        log_pi = (math.log(k) + log_q_leaf + (s_ids - m_n).view(b, k)).masked_fill(mask, NEG_INF)
        ids = ids.view(b, k).masked_fill(mask, 0)

        def cross(rows):  # [B, M] log k Q of these rows for every query
            return math.log(k) + self._proposal_log_q(q, scale, batch, store, rows.cpu(), env, log_w)

        self.log_z_bounds = None
        drawn = len((qi * len(t.members) + leaf).unique())
        self.last_stats = {"tree_fallback": 0, "tree_scored": float(n_beam + drawn / b),
                           "tree_tv": _tv_estimate(m_n.view(b, k), log_q_leaf, mask), "tree_short": int(mask.sum())}
        return Draw(ids, mask, log_pi, cross(batch.pos_rows), None, cross, self.margin_drop(q, batch, store))

    def _sample_descend(self, q, batch, store) -> Draw:
        """--tree-mode descend: Q(n) = (1 - tail) 1[n in C_q] M_n / Z_C + tail live_n / N_live over leaves (C_q: the
        ``beam`` leaves a beam search down the tree finds by upper bound, scored exactly; Z_C their mass), then a row
        of the leaf exactly: log Q_j = log Q(n) + s_j - log M_n. No product with every leaf."""
        t, b, k = self.tree, len(q), self.k
        q = q.detach().float().cpu()
        scale, g = self.scale(batch), batch.generator
        cand, cok = t.beam_leaves(q, max(1, self.beam))                                 # [B, W] leaves
        w = cand.shape[1]
        from_c = torch.rand(b, k, generator=g) >= self.tail
        u = (torch.rand(b, k, generator=g, dtype=torch.float64) * int(t.live_prefix[-1])).long()
        tail_leaf = (torch.searchsorted(t.live_prefix, u, right=True) - 1).clamp(0, len(t.members) - 1)
        qc, qk = torch.arange(b).unsqueeze(1).expand(b, w), torch.arange(b).unsqueeze(1).expand(b, k)
        tail_q = ~from_c                                     # tail leaves are scored only where a draw takes one
        s, mem = self._score(q, scale, batch, store, torch.cat([qc.flatten(), qk[tail_q]]),
                             torch.cat([cand.flatten(), tail_leaf[tail_q]]))   # each distinct (query, leaf) once
        m = torch.logsumexp(s, dim=1)
        m_c = m[:b * w].view(b, w).masked_fill(~cok, NEG_INF)
        log_zc = torch.logsumexp(m_c, dim=1)
        slot = torch.zeros(b, k, dtype=torch.long)
        slot[tail_q] = b * w + torch.arange(int(tail_q.sum()))
        late = from_c & ~torch.isfinite(log_zc).unsqueeze(1)  # no usable candidate: every draw of the query is a tail draw
        if bool(late.any()):
            s2, mem2 = self._score(q, scale, batch, store, qk[late], tail_leaf[late])
            wd = max(s.shape[1], s2.shape[1])
            s = torch.cat([_pad(s, wd, NEG_INF), _pad(s2, wd, NEG_INF)])
            mem = torch.cat([_pad(mem, wd, -1), _pad(mem2, wd, -1)])
            m = torch.cat([m, torch.logsumexp(s2, dim=1)])
            slot[late] = len(m) - len(s2) + torch.arange(len(s2))
            from_c &= ~late
        pick = _categorical(m_c, k, g)                                                  # [B, k] candidate slots
        slot = torch.where(from_c, qc.gather(1, pick) * w + pick, slot)
        leaf = torch.where(from_c, cand.gather(1, pick), tail_leaf)
        s, mem, m_n = s[slot.flatten()], mem[slot.flatten()], m[slot.flatten()]
        j = _gumbel_argmax(s, g).unsqueeze(1)
        ids, s_ids = mem.gather(1, j).squeeze(1).view(b, k), s.gather(1, j).squeeze(1).view(b, k)
        m_n = m_n.view(b, k)
        log_q_leaf = self._descend_log_q_leaf(leaf, cand, cok, m_n, log_zc)
        mask = ~torch.isfinite(m_n) | ~torch.isfinite(log_q_leaf)
        log_pi = (math.log(k) + log_q_leaf + s_ids - m_n).masked_fill(mask, NEG_INF)
        ids = ids.masked_fill(mask, 0)

        def cross(rows):
            return math.log(k) + self._descend_log_q(q, scale, batch, store, rows.cpu(), cand, cok, log_zc)

        self.log_z_bounds = None
        self.last_stats = {"tree_fallback": 0, "tree_scored": (b * w + int((~from_c).sum())) / b,
                           "tree_tv": _tv_estimate(m_n, log_q_leaf, mask), "tree_short": int(mask.sum()),
                           "tree_cand_draws": float(from_c.float().mean())}
        return Draw(ids, mask, log_pi, cross(batch.pos_rows), None, cross, self.margin_drop(q, batch, store))

    def _descend_log_q_leaf(self, leaf, cand, cok, m_n, log_zc):
        """log Q(n) of leaves [B, M] (``m_n``: their log M) given each query's candidates ``cand`` [B, W] (``cok``)."""
        in_c = ((leaf.unsqueeze(2) == cand.unsqueeze(1)) & cok.unsqueeze(1)).any(2)
        zc = log_zc.unsqueeze(1)
        a = torch.where(in_c & torch.isfinite(zc), math.log1p(-self.tail) + m_n - zc, torch.full_like(m_n, NEG_INF))
        tail = torch.where(torch.isfinite(zc), math.log(self.tail), 0.0)  # no usable candidate: every draw is a tail draw
        t_n = (self.tree.live[leaf].float() / int(self.tree.live_prefix[-1])).log() + tail
        return torch.logaddexp(a, t_n)

    def _descend_log_q(self, q, scale, batch, store, rows, cand, cok, log_zc):
        """log Q [B, M] of store ``rows`` under --tree-mode descend (-inf: removed or unusable for that query)."""
        leaf = self.tree.leaf_of[rows]
        ul, linv = leaf.clamp(min=0).unique(return_inverse=True)
        m_n = torch.logsumexp(self._score_leaves(q, scale, batch, store, ul), dim=2)[:, linv]   # [B, M]
        lf = leaf.clamp(min=0).unsqueeze(0).expand(len(q), -1)
        out = self._descend_log_q_leaf(lf, cand, cok, m_n, log_zc) + self._cross_logits(q, batch, store, scale, rows) - m_n
        return out.masked_fill((leaf < 0).unsqueeze(0), NEG_INF).nan_to_num(nan=NEG_INF)

    def _descend_env(self, q, scale, batch, store):
        """The candidates [B, W], their validity and log Z_C [B] (the diagnostics' ``proposal``)."""
        cand, cok = self.tree.beam_leaves(q, max(1, self.beam))
        qi = torch.arange(len(q)).unsqueeze(1).expand_as(cand)
        m = torch.logsumexp(self._score(q, scale, batch, store, qi.flatten(), cand.flatten())[0], dim=1)
        return cand, cok, torch.logsumexp(m.view_as(cand).masked_fill(~cok, NEG_INF), dim=1)

    def _proposal_env(self, q, scale, batch, store):
        """The proposal's leaf masses: log w_n [B, leaves padded] (live_n e^{<q, c_n> / tau_s}; the beam's leaves at
        their exact mass), per block of leaves [B, nb], their total log W [B], the beam's width and its scored pairs
        (``_score_pairs``' key, logits, rows: the draws that land in the beam read them, not a second product)."""
        b = len(q)
        aug = self._leaves()
        nb = len(aug) // BLOCK
        env, _ = self._buffers(b, nb * BLOCK)
        qs = q * scale
        torch.mm(torch.cat([qs, torch.zeros(b, 1), torch.ones(b, 1)], 1), aug.T, out=env)
        env3 = env.view(b, nb, BLOCK)
        blk_max, blocks = _block_lse(env3)
        n_l = len(self.tree.members)
        n_beam, known = min(self.beam, n_l), None
        if n_beam:
            top = _topk_by_block(env3, blk_max, n_beam)
            ok = torch.isfinite(top.values)
            qi = torch.arange(b).unsqueeze(1).expand_as(top.indices)[ok]
            kk = (qi * n_l + top.indices[ok]).unique()
            known = (kk, *self._score_pairs(q, scale, batch, store, kk))
            qi, leaf = kk // n_l, kk % n_l
            env[qi, leaf] = torch.logsumexp(known[1], dim=1)
            key = (qi * nb + leaf // BLOCK).unique()
            blocks[key // nb, key % nb] = torch.logsumexp(env3[key // nb, key % nb], dim=1)
        return env, blocks, torch.logsumexp(blocks, dim=1), n_beam, known

    def _proposal_log_q(self, q, scale, batch, store, rows, env, log_w):
        """log Q [B, M] of store ``rows`` [M] under the proposal of ``env`` (-inf: unusable for that query)."""
        leaf = self.tree.leaf_of[rows]                                                   # [M], -1: removed
        ul, inv = leaf.clamp(min=0).unique(return_inverse=True)
        m_n = torch.logsumexp(self._score_leaves(q, scale, batch, store, ul), dim=2)[:, inv]   # [B, M]
        s = self._cross_logits(q, batch, store, scale, rows)
        out = env[:, leaf.clamp(min=0)] - log_w.unsqueeze(1) + s - m_n
        return out.masked_fill((leaf < 0).unsqueeze(0) | torch.isneginf(s), NEG_INF)

    def _score_leaves(self, q, scale, batch, store, leaves):
        """Logits [B, L, cap] of every query for the rows of ``leaves`` [L] (-inf: empty slot or unusable): the
        leaves' rows gathered once and scored by one product (a few leaves for many queries: the batch's
        positives), exclusions set from their (query, position) pairs."""
        mem = self.tree.members[leaves, :max(1, int(self.tree.fill[leaves].max()))]
        ok = mem >= 0
        rows = mem[ok]
        raw = self._raw(q, store, rows)                                                  # [B, R]
        flat = raw * scale
        eq, ep = batch.excl.positions(rows)
        flat[eq, ep] = NEG_INF
        over = self.margin_over(q, batch)
        if over is not None:
            flat.masked_fill_(raw > over.float().cpu().unsqueeze(1), NEG_INF)
        out = torch.full((len(q), *mem.shape), NEG_INF)
        out[:, ok] = flat
        return out

    def _fall_back(self, q, batch, store, scored: float) -> Draw:
        self.log_z_bounds = None
        d = stream_draw(self, q, batch, store, None)
        self.last_stats = {"tree_fallback": 1, "tree_scored": scored}
        return d

    def _rest_estimate(self, q, scale, batch, store, env3, scored3, rest_blocks, z_rest_up, z_total, g):
        """log of an unbiased estimate of Z_rest [B]: U_rest x mean M_n / U_n over fresh proposals ∝ U_n
        from the unscored leaves (fewer when they hold a small share of the envelope)."""
        out = torch.full((len(q),), NEG_INF)
        has = torch.isfinite(z_rest_up)
        if not self.estimate or not bool(has.any()):
            return out
        qh = has.nonzero().squeeze(1)
        share = float((z_rest_up[qh] - z_total[qh]).exp().max())
        nb = env3.shape[1]
        blk = _categorical(rest_blocks[qh], max(1, math.ceil(self.estimate * min(1.0, share))), g)  # [H, e]
        qi = qh.unsqueeze(1).expand_as(blk).flatten()
        blk = blk.flatten()
        key, inv = (qi * nb + blk).unique(return_inverse=True)
        kq, kb = key // nb, key % nb
        within = _draw_in_rows(env3[kq, kb].masked_fill(scored3[kq, kb], NEG_INF), inv, g)
        leaf = blk * BLOCK + within
        m_n = torch.logsumexp(self._score(q, scale, batch, store, qi, leaf)[0], dim=1)
        ratio = (m_n - env3[qi, blk, within]).exp().view(len(qh), -1).mean(1)
        out[qh] = torch.where(ratio > 0, z_rest_up[qh] + ratio.clamp(min=1e-30).log(), torch.full_like(ratio, NEG_INF))
        return out

    def margin_drop(self, q, batch, store, cand=None):
        """As the base's, with the scores ``_usable`` compares (float32 products with the stored rows)."""
        over = self.margin_over(q, batch)
        if over is None:
            return None
        qf, over = q.detach().float().cpu(), over.float().cpu()
        return lambda rows: self._raw(qf, store, rows.reshape(-1).cpu()) > over.unsqueeze(1)

    def _cross_logits(self, q, batch, store, scale, rows):
        """[B, M] logits of ``rows`` for every query, -inf where unusable (excluded, margin)."""
        rows = rows.cpu()
        raw = self._raw(q, store, rows)
        qi = torch.arange(len(q))
        ok = self._usable(q, qi, rows.expand(len(q), -1), batch, raw)
        return (raw * scale).masked_fill(~ok, NEG_INF)

    def proposal(self, q, batch, store):
        """log Q [B, N] of one draw: the exact softmax over usable rows, or in proposal mode the tree's proposal
        (diagnostics: its exact TV from the softmax; small N only)."""
        q = q.detach().float().cpu()
        if self.mode == "descend":
            scale = self.scale(batch)
            return self._descend_log_q(q, scale, batch, store, torch.arange(store.n), *self._descend_env(q, scale, batch, store))
        if self.mode == "proposal":
            scale = self.scale(batch)
            env, _, log_w, _, _ = self._proposal_env(q, scale, batch, store)
            return self._proposal_log_q(q, scale, batch, store, torch.arange(store.n), env, log_w)
        raw = self._raw(q, store, torch.arange(store.n))
        rows = torch.arange(store.n).expand(len(q), -1)
        s = (raw * self.scale(batch)).masked_fill(~self._usable(q, torch.arange(len(q)), rows, batch, raw), NEG_INF)
        return s - torch.logsumexp(s, dim=1, keepdim=True)


def _tv_estimate(m_n: torch.Tensor, log_q_leaf: torch.Tensor, mask: torch.Tensor) -> float:
    """The draws' estimate of TV(Q, softmax) = E_Q |p / Q - 1| / 2, mean over queries: p_j / Q_j is M_n / (Z Q(n))
    for every row of leaf n ([B, k] each; a masked slot, a leaf with no usable row, counts 0)."""
    r = (m_n - log_q_leaf).masked_fill(mask, NEG_INF)
    lse = torch.logsumexp(r, 1, keepdim=True)
    tv = 0.5 * ((r - lse + math.log(r.shape[1])).exp() - 1).abs().mean(1)
    has = torch.isfinite(lse.squeeze(1))
    return float(tv[has].mean()) if bool(has.any()) else 0.0


def _pad(x: torch.Tensor, width: int, value) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value) if x.shape[1] < width else x


def _block_lse(env3: torch.Tensor, chunk: int = 16):
    """Per block of leaves: max and logsumexp ([B, nb] each), a few blocks at a time (small temporaries)."""
    mx = env3.amax(2)
    base = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    out = torch.empty_like(mx)
    tmp = torch.empty(env3.shape[0], chunk, env3.shape[2])  # one scratch block, reused
    for a in range(0, env3.shape[1], chunk):
        m = base[:, a:a + chunk]
        t = torch.sub(env3[:, a:a + chunk], m.unsqueeze(2), out=tmp[:, :m.shape[1]]).exp_()
        torch.sum(t, 2, out=out[:, a:a + chunk])
    return mx, out.log_().add_(base)


def _topk_by_block(env3: torch.Tensor, blk_max: torch.Tensor, k: int):
    """Top-k leaves of every row ([B, k] values and leaf ids): they lie in the k blocks of largest max."""
    nb, width = env3.shape[1], env3.shape[2]
    tb = blk_max.topk(min(k, nb), dim=1).indices                                     # [B, k']
    cand = env3.gather(1, tb.unsqueeze(2).expand(-1, -1, width)).flatten(1)          # [B, k' * width]
    top = cand.topk(k, dim=1)
    leaf = tb.gather(1, top.indices // width) * width + top.indices % width
    return torch.return_types.topk((top.values, leaf))


def _scatter_lse(x: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    """[n] logsumexp of ``x`` grouped by ``idx`` (-inf for empty groups)."""
    mx = torch.full((n,), NEG_INF).scatter_reduce_(0, idx, x, "amax")
    base = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    tot = torch.zeros(n).index_add_(0, idx, (x - base[idx]).exp())
    return tot.log() + base


def _draw_in_rows(logits: torch.Tensor, inv: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """[P] an index drawn from softmax(logits[inv[p]]) for each p ([U, C] logits, each row's CDF built
    once; one float64 search over all rows' CDFs shifted by their row number)."""
    p = torch.softmax(logits.double(), dim=1).nan_to_num(nan=0.0)
    cdf = (p.cumsum(1) / p.sum(1, keepdim=True).clamp(min=1e-300)).clamp(max=1.0)
    cdf = (cdf + torch.arange(len(p), dtype=torch.float64).unsqueeze(1)).flatten()
    u = inv.double() + torch.rand(len(inv), generator=g, dtype=torch.float64)
    pos = torch.searchsorted(cdf, u, right=True).clamp(max=len(cdf) - 1)
    return (pos - inv * logits.shape[1]).clamp(0, logits.shape[1] - 1)


def _gumbel_argmax(logits: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """[P] one index per row drawn from softmax(logits) (Gumbel-max; a row of -inf gives index 0)."""
    u = torch.rand(logits.shape, generator=g).clamp(min=1e-20)
    return (logits - (-u.log()).log()).nan_to_num(nan=NEG_INF).argmax(dim=1)


def _categorical(logits: torch.Tensor, m: int, g: torch.Generator) -> torch.Tensor:
    """[B, m] i.i.d. indices from softmax(logits) per row (inverse CDF; a row of -inf gives index 0)."""
    p = torch.softmax(logits.masked_fill(torch.isnan(logits), NEG_INF), dim=1)
    p = torch.nan_to_num(p, nan=0.0)
    empty = p.sum(1) <= 0
    p[empty, 0] = 1.0
    cdf = p.cumsum(1)
    u = torch.rand(len(p), m, generator=g) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp(max=p.shape[1] - 1)
