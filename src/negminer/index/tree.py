"""A dynamic k-means tree over cached embeddings, with radius bounds for branch and bound.

Monath, Zaheer, Allen, McCallum, "Improving Dual-Encoder Training through Dynamic Indexes for
Negative Mining", AISTATS 2023, sample the softmax from a tree whose nodes bound their descendants'
scores. Here the tree is a hierarchical k-means (not the paper's cover tree: k-means splits are
batched matrix products, and the radii they give on clustered embeddings are tight). Every node
keeps a representative c (its rows' mean at build), its descendant count and a radius r with
||x - c|| <= r for every descendant x, so for any query q

    |<q, x> - <q, c>| <= ||q|| r        (Cauchy-Schwarz).

Layout: levels 0 (root) .. D (leaves); every leaf is at depth D (a node small enough to stop early is
passed down as a single child), so searches move one level at a time for all queries at once. A node's
children are contiguous in the next level (``child_lo``, ``child_cnt``), so its leaves are a contiguous
range (``leaf_lo``, ``leaf_hi``). Leaves hold store rows in a slot table ``members`` [leaves, cap]
(-1: empty or removed), so a row moves between leaves in O(1).

Build: top-down, one level at a time; a node of more than ``leaf_size`` rows is split into
min(b, ceil(n / leaf_size)) children by k-means (seeded, trained on at most 32 rows per centre, every
row assigned), until all nodes hold at most ``leaf_size``: each row is compared with b centres per level,
O(N b d log_b N). All big nodes of a level are clustered together by batched matrix products
(index/segmented.py: nodes of similar size padded into one block; plain torch, no compiled extension
needed, since the work is in bmm calls and the Python loop runs per block, not per node). Then every
node is refined while at most b centres chosen farthest-first (Gonzalez's k-centre; at most one per 4
rows) cover its rows within ``gain`` x its radius, and split regardless (into b) while its radius
exceeds ``wide`` x the median leaf radius: top-level cuts leave fragments of one cluster in a node with
others (and stragglers), and such a mixed leaf's ball spans the distance between clusters, hence every
query's bound; one tight cluster is not cut (in high dimension no few centres cover it much tighter).
``gain`` 0 turns this phase off, ``wide`` 0 its forced splits.

Updates (``update(rows, emb)``, called with the store's new embeddings): a row inside its leaf's
ball stays; one that left it is re-inserted by greedy descent (nearest centre per level) into a leaf
with room; every ancestor's radius then grows to cover the row. A node whose radius has grown past
``degrade`` x its radius at build is rebuilt locally (its subtree's rows reassigned to the nearest of
its leaves, centres and radii recomputed); the whole tree is never rebuilt by updates.

Example::

    tree = KMeansTree(branching=16, leaf_size=64).build(store.embeddings, store.n)
    scores, rows = tree.topk(q, 10)                    # exact top-10 by branch and bound
    tree.update(changed_rows, store.embeddings(changed_rows))
"""

from __future__ import annotations

import math

import torch

from negminer.index import segmented

NEG_INF = -math.inf


class KMeansTree:
    def __init__(self, branching: int = 16, leaf_size: int = 64, iters: int = 8, degrade: float = 2.0,
                 slack: float = 1.5, gain: float = 0.5, wide: float = 2.0, seed: int = 0, chunk: int = 1 << 18):
        if branching < 2 or leaf_size < 1:
            raise ValueError("tree: branching must be >= 2 and leaf_size >= 1")
        self.b, self.leaf_size, self.iters, self.degrade, self.slack = branching, leaf_size, iters, degrade, slack
        self.seed, self.chunk, self.gain, self.wide = seed, chunk, gain, wide
        self.rebuilds = 0

    # ---- build ----------------------------------------------------------------------------
    def build(self, emb_fn, n: int, rows: torch.Tensor | None = None) -> "KMeansTree":
        """``emb_fn(rows)``: float32 [m, d] embeddings of store rows; ``rows``: the rows indexed (all).
        One level at a time, every big node of the level split at once (index/segmented.py)."""
        self.n = n
        g = torch.Generator().manual_seed(self.seed)
        perm = torch.arange(n) if rows is None else torch.as_tensor(rows, dtype=torch.long)
        bounds = torch.tensor([0, len(perm)])
        c, r = segmented.balls(emb_fn, perm, bounds, torch.zeros(1, dtype=torch.long), self.chunk)
        self.center, self.radius = [c], [r]
        self.child_lo, self.child_cnt, self.parent = [], [], [torch.full((1,), -1, dtype=torch.long)]
        r_lim, refine = math.inf, False  # phase 2, once every node fits a leaf: split off groups much tighter than their node
        final = torch.zeros(1, dtype=torch.bool)
        while True:
            size = bounds.diff()
            big = ~final & (size > 1) if refine else size > self.leaf_size
            if not bool(big.any()):
                if not refine and self.gain:
                    refine, final = True, size <= 1
                    r_lim = self.wide * float(self.radius[-1].median()) if self.wide else math.inf
                    continue
                break
            nodes = big.nonzero().squeeze(1)
            part = torch.zeros(len(perm), dtype=torch.long)
            if refine:
                k = torch.full((len(nodes),), self.b)
                done = segmented.split(emb_fn, perm, bounds, nodes, k, self.iters, 0, g, part, self.gain, r_lim)
                final[nodes[~done]] = True
                big[nodes[~done]] = False
                if not bool(done.any()):
                    continue
            else:
                k = torch.ceil(size[nodes] / self.leaf_size).long().clamp(min=2, max=self.b)
                segmented.split(emb_fn, perm, bounds, nodes, k, self.iters, 32, g, part)
            key = torch.repeat_interleave(torch.arange(len(size)), size) * self.b + part
            order = key.argsort(stable=True)
            perm, key = perm[order], key[order]
            uk, cnt = key.unique_consecutive(return_counts=True)
            parent = uk // self.b
            child_cnt = torch.bincount(parent, minlength=len(size))
            bounds = torch.cat([torch.zeros(1, dtype=torch.long), cnt.cumsum(0)])
            c, r = self.center[-1][parent].clone(), self.radius[-1][parent].clone()  # pass-through children
            new = big[parent].nonzero().squeeze(1)
            c[new], r[new] = segmented.balls(emb_fn, perm, bounds, new, self.chunk)
            self.child_lo.append(child_cnt.cumsum(0) - child_cnt)
            self.child_cnt.append(child_cnt)
            self.parent.append(parent)
            self.center.append(c)
            self.radius.append(r)
            final = final[parent]
        self.depth, self.r_lim = len(self.center) - 1, r_lim
        size = bounds.diff()
        cap = max(1, math.ceil(int(size.max()) * self.slack))
        leaf = torch.repeat_interleave(torch.arange(len(size)), size)
        slot = torch.arange(len(perm)) - bounds[leaf]
        self.members = torch.full((len(size), cap), -1, dtype=torch.long)
        self.members[leaf, slot] = perm
        self.fill = size.clone()
        self.leaf_of = torch.full((n,), -1, dtype=torch.long)
        self.slot_of = torch.full((n,), -1, dtype=torch.long)
        self.leaf_of[perm], self.slot_of[perm] = leaf, slot
        self.live = self.fill.clone()
        self.built_radius = [r.clone() for r in self.radius]
        self._ranges()
        return self

    def _ranges(self) -> None:
        """leaf_lo / leaf_hi of every node, bottom-up, and the prefix sums of leaf fills."""
        n_leaves = len(self.members)
        lo, hi = torch.arange(n_leaves), torch.arange(1, n_leaves + 1)
        self.leaf_lo, self.leaf_hi = [None] * (self.depth + 1), [None] * (self.depth + 1)
        self.leaf_lo[self.depth], self.leaf_hi[self.depth] = lo, hi
        for lv in range(self.depth - 1, -1, -1):
            first, cnt = self.child_lo[lv], self.child_cnt[lv]
            self.leaf_lo[lv] = self.leaf_lo[lv + 1][first]
            self.leaf_hi[lv] = self.leaf_hi[lv + 1][first + cnt - 1]
        self._prefix()

    def _prefix(self) -> None:  # every change to the tree ends here: ``version`` tells caches to refresh
        self.version = getattr(self, "version", 0) + 1
        self.prefix = torch.cat([torch.zeros(1, dtype=torch.long), self.fill.cumsum(0)])
        self.live_prefix = torch.cat([torch.zeros(1, dtype=torch.long), self.live.cumsum(0)])

    # ---- node facts -----------------------------------------------------------------------
    def count(self, level: int, nodes: torch.Tensor, live: bool = False) -> torch.Tensor:
        """Rows under ``nodes`` (slots, removed ones included; ``live``: present rows only)."""
        p = self.live_prefix if live else self.prefix
        return p[self.leaf_hi[level][nodes]] - p[self.leaf_lo[level][nodes]]

    def children(self, level: int, nodes: torch.Tensor):
        """[..., b] child ids in level + 1 and their validity."""
        ar = torch.arange(self.b)
        ids = self.child_lo[level][nodes].unsqueeze(-1) + ar
        ok = ar < self.child_cnt[level][nodes].unsqueeze(-1)
        return ids.masked_fill(~ok, 0), ok

    def ancestors(self, leaves: torch.Tensor) -> list[torch.Tensor]:
        """Per level 0..D, the ancestor of each leaf at that level (the leaf itself at D)."""
        out = [leaves]
        for lv in range(self.depth, 0, -1):
            out.append(self.parent[lv][out[-1]])
        return out[::-1]

    def descendant(self, level: int, nodes: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The store row in slot ``u`` (0 <= u < count) of each node's leaf range; -1 for a removed slot."""
        pos = self.prefix[self.leaf_lo[level][nodes]] + u
        leaf = torch.searchsorted(self.prefix, pos, right=True) - 1
        return self.members[leaf, pos - self.prefix[leaf]]

    # ---- updates --------------------------------------------------------------------------
    def update(self, rows: torch.Tensor, emb: torch.Tensor) -> dict:
        """The store changed ``rows`` to ``emb`` [m, d]: keep every bound valid (see the module doc)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        keep = self.leaf_of[rows] >= 0  # rows outside the indexed pool are ignored
        rows, emb = rows[keep], emb[keep].float()
        if not len(rows):
            return {"moved": 0, "rebuilt": 0}
        rows, inv = rows.unique(return_inverse=True)  # a row written twice: its last embedding
        emb = emb[torch.zeros(len(rows), dtype=torch.long).scatter_reduce_(0, inv, torch.arange(len(inv)), "amax")]
        leaf = self.leaf_of[rows]
        d = (emb - self.center[self.depth][leaf]).norm(dim=1)
        out = d > self.radius[self.depth][leaf]
        if bool(out.any()):
            self._reinsert(rows[out], emb[out])
        anc = self.ancestors(self.leaf_of[rows])
        for lv, nodes in enumerate(anc):
            dist = (emb - self.center[lv][nodes]).norm(dim=1)
            self.radius[lv].scatter_reduce_(0, nodes, dist, reduce="amax")
        rebuilt = self._repair([a.unique() for a in anc])
        self._prefix()
        return {"moved": int(out.sum()), "rebuilt": rebuilt}

    def _reinsert(self, rows: torch.Tensor, emb: torch.Tensor) -> None:
        old, slot = self.leaf_of[rows], self.slot_of[rows]
        self.members[old, slot] = -1
        self.live -= torch.bincount(old, minlength=len(self.live))
        self._place(rows, torch.cat([self.descend(emb[i:i + 8192]) for i in range(0, len(rows), 8192)]))

    def descend(self, x: torch.Tensor) -> torch.Tensor:
        """The leaf reached from the root by the nearest centre at every level (greedy insertion)."""
        node = torch.zeros(len(x), dtype=torch.long)
        for lv in range(self.depth):
            ids, ok = self.children(lv, node)
            s = -(x.unsqueeze(1) - self.center[lv + 1][ids]).norm(dim=2)
            node = ids.gather(1, s.masked_fill(~ok, NEG_INF).argmax(1, keepdim=True)).squeeze(1)
        return node

    def subtree(self, level: int, node: int) -> list[tuple[int, int, int]]:
        """(level, first, end) node ranges of the subtree under ``node``, one per level down to the leaves."""
        out, lo, hi = [], node, node + 1
        for lv in range(level, self.depth + 1):
            out.append((lv, lo, hi))
            if lv < self.depth:
                lo, hi = int(self.child_lo[lv][lo]), int(self.child_lo[lv][hi - 1] + self.child_cnt[lv][hi - 1])
        return out

    def _place(self, rows: torch.Tensor, leaves: torch.Tensor) -> None:
        """Append ``rows`` to ``leaves`` (same length), compacting or widening the slot table if full."""
        order = leaves.argsort(stable=True)
        rows, leaves = rows[order], leaves[order]
        uniq, cnt = leaves.unique_consecutive(return_counts=True)
        rank = torch.arange(len(rows)) - torch.repeat_interleave(cnt.cumsum(0) - cnt, cnt)
        need = self.fill[uniq] + cnt
        full = uniq[need > self.members.shape[1]]
        if len(full):
            self._compact(full)
            need = self.fill[uniq] + cnt
            if int(need.max()) > self.members.shape[1]:
                wider = torch.full((len(self.members), math.ceil(int(need.max()) * self.slack)), -1, dtype=torch.long)
                wider[:, :self.members.shape[1]] = self.members
                self.members = wider
        slot = self.fill[leaves] + rank
        self.members[leaves, slot] = rows
        self.leaf_of[rows], self.slot_of[rows] = leaves, slot
        self.fill.index_add_(0, uniq, cnt)
        self.live.index_add_(0, uniq, cnt)

    def _compact(self, leaves: torch.Tensor) -> None:
        for lf in leaves.tolist():
            m = self.members[lf, : int(self.fill[lf])]
            m = m[m >= 0]
            self.members[lf] = -1
            self.members[lf, :len(m)] = m
            self.slot_of[m] = torch.arange(len(m))
            self.fill[lf] = len(m)

    def _repair(self, touched: list[torch.Tensor]) -> int:
        """Rebuild degraded subtrees below the root locally (needs ``bind``); ``touched``: per level the
        nodes whose radius may have grown (only they can have degraded). Returns how many."""
        fn = getattr(self, "emb_fn", None)
        if fn is None:
            return 0
        done = 0
        for lv in range(1, self.depth + 1):
            nodes = touched[lv]
            bad = nodes[self.radius[lv][nodes] > self.degrade * self.built_radius[lv][nodes] + 1e-6]
            for node in bad.tolist():
                if self.radius[lv][node] > self.degrade * self.built_radius[lv][node] + 1e-6:
                    self.rebuild_subtree(lv, node, fn)
                    done += 1
        self.rebuilds += done
        return done

    def bind(self, emb_fn) -> None:
        """Where local rebuilds read embeddings (float32 [m, d] of store rows)."""
        self.emb_fn = emb_fn

    def rebuild_subtree(self, level: int, node: int, emb_fn) -> None:
        """Reassign the subtree's rows to its nearest leaf centre (refreshed from its rows), then
        recompute centres and radii bottom-up; the topology and every other node stay."""
        lo, hi = int(self.leaf_lo[level][node]), int(self.leaf_hi[level][node])
        m = self.members[lo:hi]
        rows = m[m >= 0]
        if not len(rows):
            return
        x = emb_fn(rows)
        centers = self.center[self.depth][lo:hi]
        a = _nearest(x, centers) + lo
        self.members[lo:hi] = -1
        self.fill[lo:hi] = 0
        self.live[lo:hi] = 0
        self._place(rows, a)
        anc = self.ancestors(self.leaf_of[rows])
        for lv, a, z in reversed(self.subtree(level, node)):  # bottom-up, only the subtree's node ranges
            local = anc[lv] - a
            sums = torch.zeros(z - a, x.shape[1]).index_add_(0, local, x)
            cnt = torch.bincount(local, minlength=z - a)
            touched = cnt > 0
            c, r, built = self.center[lv][a:z], self.radius[lv][a:z], self.built_radius[lv][a:z]
            c[touched] = sums[touched] / cnt[touched].unsqueeze(1)
            dist = torch.zeros(z - a).scatter_reduce_(0, local, (x - c[local]).norm(dim=1), reduce="amax")
            r[touched] = dist[touched]
            built[touched] = dist[touched]
            built[~touched] = torch.maximum(built[~touched], r[~touched])  # emptied: its radius accepted as built
        # ancestors above keep their centres; their radii must still cover the moved subtree
        for lv in range(level - 1, -1, -1):
            nodes = anc[lv]
            self.radius[lv].scatter_reduce_(0, nodes, (x - self.center[lv][nodes]).norm(dim=1), reduce="amax")
        self._prefix()

    # ---- checks ---------------------------------------------------------------------------
    def check(self, emb_fn) -> float:
        """Largest bound violation max(||x - c|| - r) over every (node, descendant) pair (<= 0: valid)."""
        rows = self.members[self.members >= 0]
        x = emb_fn(rows)
        worst = -math.inf
        for lv, nodes in enumerate(self.ancestors(self.leaf_of[rows])):
            worst = max(worst, float(((x - self.center[lv][nodes]).norm(dim=1) - self.radius[lv][nodes]).max()))
        return worst

    # ---- search ---------------------------------------------------------------------------
    def topk(self, q: torch.Tensor, k: int, emb_fn, beam: int = 0, exclude=None):
        """Top-k rows by <q, x> [B, k] (scores, rows; -inf / -1 padding). ``beam`` 0: exact branch and
        bound; else keep the ``beam`` best nodes per level by upper bound (approximate, faster).
        ``exclude(rows [B, m]) -> bool``: rows never returned (positives)."""
        q = q.float()
        qn = q.norm(dim=1, keepdim=True)
        b = len(q)
        if beam:
            return self._score_leaves(q, *self._descend(q, qn, beam), k, emb_fn, exclude)
        # a threshold first, from a cheap beam; then every node whose upper bound reaches it
        best_s, _ = self._score_leaves(q, *self._descend(q, qn, max(4, math.ceil(2 * k / self.leaf_size))), k,
                                       emb_fn, exclude)
        theta = best_s[:, -1:]
        nodes, ok = torch.zeros(b, 1, dtype=torch.long), torch.ones(b, 1, dtype=torch.bool)
        for lv in range(self.depth):
            ids, cok = self.children(lv, nodes)
            ids, cok = ids.flatten(1), (cok & ok.unsqueeze(-1)).flatten(1)
            up = torch.einsum("bd,bnd->bn", q, self.center[lv + 1][ids]) + qn * self.radius[lv + 1][ids]
            cok &= (up >= theta) & (self.count(lv + 1, ids, live=True) > 0)
            width = int(cok.sum(1).max()) if cok.any() else 1
            keep = up.masked_fill(~cok, NEG_INF).topk(width, dim=1)
            nodes, ok = ids.gather(1, keep.indices), cok.gather(1, keep.indices)
        return self._score_leaves(q, nodes, ok, k, emb_fn, exclude)

    def beam_leaves(self, q: torch.Tensor, width: int):
        """The ``width`` best leaves per query by upper bound, found by a beam search down the tree: [B, W] leaves
        and their validity (the approximate top-k's candidates; the tree sampler's descend mode)."""
        q = q.float()
        return self._descend(q, q.norm(dim=1, keepdim=True), width)

    def _descend(self, q, qn, width):
        """The ``width`` best nodes per query by upper bound, level by level: leaves [B, W] and validity."""
        nodes, ok = torch.zeros(len(q), 1, dtype=torch.long), torch.ones(len(q), 1, dtype=torch.bool)
        for lv in range(self.depth):
            ids, cok = self.children(lv, nodes)
            ids, cok = ids.flatten(1), (cok & ok.unsqueeze(-1)).flatten(1)
            c = self.center[lv + 1]
            if len(c) <= 16 * ids.shape[1]:  # a small level: one product with all its nodes beats gathering centres
                up = (q @ c.T).gather(1, ids) + qn * self.radius[lv + 1][ids]
            else:
                up = torch.einsum("bd,bnd->bn", q, c[ids]) + qn * self.radius[lv + 1][ids]
            up = up.masked_fill(~cok | (self.count(lv + 1, ids, live=True) == 0), NEG_INF)
            keep = up.topk(min(width, up.shape[1]), dim=1)
            nodes, ok = ids.gather(1, keep.indices), torch.isfinite(keep.values)
        return nodes, ok

    def _score_leaves(self, q, leaves, ok, k, emb_fn, exclude):
        rows = self.members[leaves].flatten(1)                      # [B, W * cap]
        bad = (rows < 0) | ~ok.repeat_interleave(self.members.shape[1], dim=1)
        if exclude is not None:
            bad |= exclude(rows.clamp(min=0))
        x = emb_fn(rows.clamp(min=0).flatten()).view(*rows.shape, -1)
        s = torch.einsum("bd,bmd->bm", q, x).masked_fill(bad, NEG_INF)
        top = s.topk(min(k, s.shape[1]), dim=1)
        r = rows.gather(1, top.indices).masked_fill(torch.isneginf(top.values), -1)
        if top.values.shape[1] < k:
            pad = k - top.values.shape[1]
            return (torch.cat([top.values, torch.full((len(q), pad), NEG_INF)], 1),
                    torch.cat([r, torch.full((len(q), pad), -1, dtype=torch.long)], 1))
        return top.values, r

    # ---- checkpoint -----------------------------------------------------------------------
    def state(self, prefix: str) -> dict:
        t = {f"{prefix}.members": self.members, f"{prefix}.fill": self.fill, f"{prefix}.live": self.live,
             f"{prefix}.leaf_of": self.leaf_of, f"{prefix}.slot_of": self.slot_of}
        for lv in range(self.depth + 1):
            t[f"{prefix}.center.{lv}"] = self.center[lv]
            t[f"{prefix}.radius.{lv}"] = self.radius[lv]
            t[f"{prefix}.built_radius.{lv}"] = self.built_radius[lv]
            t[f"{prefix}.parent.{lv}"] = self.parent[lv]
            if lv < self.depth:
                t[f"{prefix}.child_lo.{lv}"] = self.child_lo[lv]
                t[f"{prefix}.child_cnt.{lv}"] = self.child_cnt[lv]
        return t

    def load_state(self, t: dict, prefix: str) -> "KMeansTree":
        self.members, self.fill, self.live, self.leaf_of, self.slot_of = (
            t[f"{prefix}.{k}"].clone() for k in ("members", "fill", "live", "leaf_of", "slot_of"))
        self.n = len(self.leaf_of)
        self.depth = sum(1 for k in t if k.startswith(f"{prefix}.center.")) - 1
        get = lambda name, n: [t[f"{prefix}.{name}.{lv}"].clone() for lv in range(n)]  # noqa: E731
        self.center, self.radius = get("center", self.depth + 1), get("radius", self.depth + 1)
        self.built_radius, self.parent = get("built_radius", self.depth + 1), get("parent", self.depth + 1)
        self.child_lo, self.child_cnt = get("child_lo", self.depth), get("child_cnt", self.depth)
        self._ranges()
        return self


def _nearest(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centre (Euclidean) of each row."""
    return (x @ c.T - 0.5 * (c * c).sum(1)).argmax(1)
