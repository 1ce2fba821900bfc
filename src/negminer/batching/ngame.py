"""Negative-mining-aware mini-batches: batches made of whole clusters of similar queries.

Dahiya, Gupta, Saini, Dave, Jain, Jain, Varma, "NGAME: Negative Mining-aware Mini-batching for
Extreme Classification", WSDM 2023.

The training queries are split by balanced hierarchical 2-means on their embeddings into clusters
of exactly C queries (each split cuts a node at a multiple of C, so one cluster, the remainder,
holds the n mod C left over); C must divide the batch size B. An epoch lays the full clusters out
in a random order and cuts that sequence into batches of B / C whole clusters, so a batch's
in-batch negatives (the other queries' positives) are the positives of similar queries: hard.
The remainder cluster sits the epoch out, as drop-last does with random batches. Curriculum: the
cluster size starts at 1 (random batches) and doubles at the epochs listed in ``curriculum``, up
to C (a power of two then), each cluster split into groups of the stage's size. The clusters are
rebuilt every ``recluster_every`` epochs from ``warmup`` on, from the query embeddings the
training forward recorded (no extra pass; queries not seen since are encoded) or by re-encoding
every training query (``embeddings="encode"``); both counted in query_encodes. Clustering happens
at epoch boundaries only: the batches of an epoch are fixed when it starts.

Expected in-batch counts for the mixture correction (pipeline/assemble.py): a (micro-)batch of b
queries, s | b, holds query i's group G(i) (s queries) and b/s - 1 other groups drawn uniformly
from the other F - 1 full groups, so target j is expected
    c_i(j) = L_i(j) + (b - s) / (F s - s) * (W(j) - L_i(j) - w_i(j))
times among i's in-batch negatives, with w_q(j) = 1 / |pos(q)| for j in pos(q), L_i the sum of w
over G(i) minus i, and W the sum over the queries of the full groups: exact, because no group
straddles two batches (nor two micro-batches, when s divides the micro-batch). With s = 1 this is
the random batcher's.

    b = NgameBatcher(n, 64, seed=0, positives=pos_lists, num_targets=N, cluster_size=16)
    b.prepare(step, encode)       # at each step: (re)cluster at epoch starts; encode(idx) -> [m, d]
    b.record(idx, q.detach())     # after the forward: the embeddings the next clustering uses
"""

from __future__ import annotations

import math

import numpy as np
import torch

from negminer.batching.random import RandomBatcher


def balanced_clusters(x: torch.Tensor, size: int, seed: int, iters: int = 6) -> torch.Tensor:
    """Cluster id of each row of ``x`` [n, d]: balanced hierarchical 2-means (every split cuts a node, by
    sorting its rows on x . (c_1 - c_2), at the multiple of ``size`` nearest its middle) until nodes have at
    most ``size`` rows: every cluster has exactly ``size`` rows but one, of n mod size. All nodes of a level
    are split at once (segment sums), so the cost is O(n d log(n / size))."""
    n = len(x)
    x = torch.nn.functional.normalize(x.float(), dim=1)
    order = torch.arange(n)
    start, length = torch.zeros(1, dtype=torch.long), torch.tensor([n])
    g = torch.Generator().manual_seed(seed)
    while int(length.max()) > size:
        split = length > size  # nodes of at most ``size`` rows are final: they pass through unchanged
        s = len(length)
        seg = torch.repeat_interleave(torch.arange(s), length)
        within = torch.arange(n) - start[seg]
        r1 = (torch.rand(s, generator=g) * length).long()
        r2 = (r1 + 1 + (torch.rand(s, generator=g) * (length - 1)).long()) % length.clamp(min=1)
        c1, c2 = x[order[start + r1]], x[order[start + r2]]
        left_len = torch.where(split, size * torch.div(length + size, 2 * size, rounding_mode="floor"), length)
        left_len = torch.where(split & (left_len >= length), left_len - size, left_len)  # both halves non-empty
        for _ in range(iters):
            key = (x[order] * (c1 - c2)[seg]).sum(1)              # larger: nearer c_1
            key = torch.where(split[seg], key, -within.float())     # final nodes keep their order
            perm = torch.argsort(-key, stable=True)
            perm = perm[torch.argsort(seg[perm], stable=True)]     # by node, then by key within it
            order = order[perm]
            left = within < left_len[seg]
            xs = x[order]
            c1 = torch.zeros(s, x.shape[1]).index_add_(0, seg[left], xs[left])
            c2 = torch.zeros(s, x.shape[1]).index_add_(0, seg[~left], xs[~left])
        start = torch.stack([start, start + left_len], 1).reshape(-1)
        length = torch.stack([left_len, length - left_len], 1).reshape(-1)
        keep = length > 0
        start, length = start[keep], length[keep]
    labels = torch.empty(n, dtype=torch.long)
    labels[order] = torch.repeat_interleave(torch.arange(len(length)), length)
    return labels


class NgameBatcher(RandomBatcher):
    def __init__(self, num_examples: int, batch_size: int, seed: int, positives=None, num_targets: int = 0,
                 cluster_size: int = 16, warmup: int = 0, recluster_every: int = 1, curriculum=(),
                 embeddings: str = "recorded"):
        super().__init__(num_examples, batch_size, seed, positives, num_targets)
        if embeddings not in ("recorded", "encode"):
            raise ValueError("ngame embeddings: recorded or encode")
        if cluster_size < 1 or batch_size % cluster_size:
            raise ValueError(f"ngame: the cluster size {cluster_size} must divide the batch size {batch_size} "
                             "(batches hold whole clusters)")
        if curriculum and cluster_size & (cluster_size - 1):
            raise ValueError(f"ngame: a curriculum doubles the cluster size up to it: {cluster_size} must be a power of two")
        self.cluster_size, self.warmup, self.every = cluster_size, warmup, max(1, recluster_every)
        self.curriculum, self.embeddings = sorted(int(e) for e in curriculum), embeddings
        self.positives = [list(p) for p in positives] if positives is not None else None
        self.labels: torch.Tensor | None = None   # cluster of each query, for the epoch in ``labels_epoch``
        self.labels_epoch = -1
        self.emb: torch.Tensor | None = None      # [n, d] last recorded query embeddings
        self.seen: torch.Tensor | None = None     # recorded since the last clustering
        self.stats: dict = {}

    # ---- schedule --------------------------------------------------------------------------
    def size_at(self, epoch: int) -> int:
        """Cluster size in effect in ``epoch`` (1: random batches)."""
        if epoch < self.warmup:
            return 1
        if not self.curriculum:
            return self.cluster_size
        return min(self.cluster_size, 2 ** sum(e <= epoch for e in self.curriculum))

    def clusters_epoch(self, epoch: int) -> int:
        """The epoch whose start built the clusters used in ``epoch`` (-1: none)."""
        if epoch < self.warmup:
            return -1
        return self.warmup + (epoch - self.warmup) // self.every * self.every

    def prepare(self, step: int, encode, dist=None) -> None:
        """Before ``step``: build the clusters its epoch needs (``encode(idx) -> [m, d]``, counted by the caller).
        Under torchrun (``dist``) rank 0 clusters and broadcasts: every rank batches alike."""
        epoch, _ = self.position(step)
        due = self.clusters_epoch(epoch)
        if due < 0 or due == self.labels_epoch or all(self.size_at(e) == 1 for e in range(due, due + self.every)):
            return
        if self.embeddings == "encode" or self.emb is None:
            x = encode(np.arange(self.n))
            self.stats = {"ngame_encoded": self.n}
        else:
            missing = (~self.seen).nonzero().flatten().numpy()
            x = self.emb.clone()
            if len(missing):
                x[torch.from_numpy(missing)] = encode(missing).float().cpu()
            self.stats = {"ngame_encoded": len(missing)}
        self.emb = x.float().cpu()
        self.seen = torch.zeros(self.n, dtype=torch.bool)
        on = dist is not None and dist.on
        labels = balanced_clusters(self.emb, self.cluster_size, self.seed * 1_000_003 + due) \
            if not on or dist.main else None
        self.labels = dist.broadcast(labels, (self.n,), torch.long) if on else labels
        self.labels_epoch = due

    def record(self, idx, q: torch.Tensor) -> None:
        q = q.detach().float().cpu()
        if self.emb is None:
            self.emb = torch.zeros(self.n, q.shape[1])
            self.seen = torch.zeros(self.n, dtype=torch.bool)
        i = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        self.emb[i] = q
        self.seen[i] = True

    # ---- batches ---------------------------------------------------------------------------
    def groups(self, epoch: int) -> torch.Tensor | None:
        """Group of each query in ``epoch``'s layout (-1: sits the epoch out), or None for random batches.
        Groups are the clusters, or at a curriculum stage below C consecutive parts of them of the
        stage's size; the remainder cluster (fewer than C queries) is left out."""
        size = self.size_at(epoch)
        if size == 1 or self.labels is None:
            return None
        counts = torch.bincount(self.labels)
        full = counts[self.labels] == self.cluster_size
        order = torch.argsort(self.labels, stable=True)
        first = torch.cumsum(counts, 0) - counts
        within = torch.empty(self.n, dtype=torch.long)
        within[order] = torch.arange(self.n) - first[self.labels[order]]
        sub = self.labels * self.cluster_size + within // size
        return torch.where(full, torch.unique(sub, return_inverse=True)[1], torch.full_like(sub, -1))

    def layout(self, epoch: int, salt: int | None = None) -> np.ndarray:
        """The epoch's queries in batch order: its groups, whole, in a random order (the batches cut it)."""
        grp = self.groups(epoch)
        if grp is None:
            return super().layout(epoch, salt)
        rng = np.random.default_rng([self.seed, epoch, 17] + ([] if salt is None else [salt]))
        by = torch.argsort(grp, stable=True).numpy()
        counts = torch.bincount(grp[grp >= 0]).numpy()
        by = by[int((grp < 0).sum()):]
        parts = np.split(by, np.cumsum(counts)[:-1])
        return np.concatenate([parts[c] for c in rng.permutation(len(parts))])

    def batch(self, step: int) -> np.ndarray:
        epoch, i = self.position(step)
        if epoch != self._perm_epoch:
            self._perm, self._grp, self._perm_epoch = self.layout(epoch), self.groups(epoch), epoch
            self._w = None  # W over this layout's full groups, computed when first needed
        return self._perm[i * self.batch_size : (i + 1) * self.batch_size]

    def log_batch_count(self, rows: torch.Tensor, queries: torch.Tensor | None = None,
                        size: int | None = None) -> torch.Tensor:
        """log c_i(rows) for a (micro-)batch of ``size`` queries (default: the batch) made of whole groups:
        ``rows`` [1 or B, m] (shared or per query), ``queries`` [B] -> [B, m]."""
        grp = getattr(self, "_grp", None)
        if grp is None or queries is None:
            return super().log_batch_count(rows, queries, size)
        b = self.batch_size if size is None else size
        s = int(torch.bincount(grp[grp >= 0]).max())
        if b % s:
            raise ValueError(f"ngame: a (micro-)batch of {b} queries does not hold whole groups of {s}")
        m_full = int((grp >= 0).sum())
        a = (b - s) / max(1, m_full - s)
        queries = queries.cpu().long()
        rows = rows.cpu().reshape(len(rows), -1)
        w_all = self._w_full()[rows]                                               # W(j), [1 or B, m]
        own = self._w_of(queries.unsqueeze(1), rows)                               # w_i(j), [B, m]
        mates = [(grp == grp[qi]).nonzero().flatten() for qi in queries.tolist()]
        loc = torch.stack([self._w_of(m.unsqueeze(0), rows[r if len(rows) > 1 else 0].unsqueeze(0)).sum(0)
                           for r, m in enumerate(mates)]) - own                   # L_i(j)
        c = loc + a * (w_all - loc - own).clamp(min=0)
        return c.log().float()

    def _w_full(self) -> torch.Tensor:
        """W(j) over the queries of the layout's full groups, float64 [num_targets]."""
        if getattr(self, "_w", None) is None:
            w = np.zeros(len(self.log_w), dtype=np.float64)
            for qi in (self._grp >= 0).nonzero().flatten().tolist():
                rows = self.positives[qi]
                np.add.at(w, np.asarray(rows, dtype=np.int64), 1.0 / len(rows))
            self._w = torch.from_numpy(w)
        return self._w

    def _w_of(self, queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """[B, m] float64: for each b, the sum over the queries ``queries[b]`` of w_q(rows[b]) (``rows`` [B or
        1, m])."""
        out = torch.zeros(queries.shape[0], rows.shape[1], dtype=torch.float64)
        for b in range(queries.shape[0]):
            r = rows[b if len(rows) > 1 else 0]
            for qi in queries[b].tolist():
                p = self.positives[qi]
                out[b] += torch.isin(r, torch.as_tensor(p)).double() / len(p)
        return out

    # ---- checkpoint ------------------------------------------------------------------------
    def state(self) -> tuple[dict, dict]:
        t = {}
        if self.emb is not None:
            t["batcher.emb"], t["batcher.seen"] = self.emb.contiguous(), self.seen.to(torch.uint8)
        if self.labels is not None:
            t["batcher.labels"] = self.labels
        return t, {"labels_epoch": self.labels_epoch}

    def load_state(self, tensors: dict, meta: dict) -> None:
        if "batcher.emb" in tensors:
            self.emb, self.seen = tensors["batcher.emb"].float(), tensors["batcher.seen"].bool()
        self.labels = tensors.get("batcher.labels")
        self.labels_epoch = meta.get("labels_epoch", -1)
        self._perm_epoch = -1
