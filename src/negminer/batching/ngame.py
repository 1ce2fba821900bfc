"""Negative-mining-aware mini-batches: batches made of whole clusters of similar queries.

Dahiya, Gupta, Saini, Dave, Jain, Jain, Varma, "NGAME: Negative Mining-aware Mini-batching for
Extreme Classification", WSDM 2023.

The training queries are split by balanced hierarchical 2-means on their embeddings into clusters
of at most C (between C/2 and C) queries; an epoch lays the clusters out in a random order and
cuts that sequence into batches of B, so a batch holds B / C clusters and its in-batch negatives
(the other queries' positives) are the positives of similar queries: hard. Curriculum: the cluster
size starts at 1 (random batches) and doubles at the epochs listed in ``curriculum``, up to C.
The clusters are rebuilt every ``recluster_every`` epochs from ``warmup`` on, from the query
embeddings the training forward recorded (no extra pass; queries not seen since are encoded) or
by re-encoding every training query (``embeddings="encode"``); both counted in query_encodes.
Clustering happens at epoch boundaries only: the batches of an epoch are fixed when it starts.

Expected in-batch counts for the mixture correction (losses/inputs.py): query i's batch holds the
rest of its cluster C(i) and other queries taken (nearly) uniformly, so target j is expected
    c_i(j) = L_i(j) + (B - |C(i)|) / (n - |C(i)|) * (W(j) - L_i(j) - w_i(j))
times among i's in-batch negatives, with w_q(j) = 1 / |pos(q)| for j in pos(q), L_i the sum of w
over C(i) minus i, W the sum over all queries. With C = 1 this is the random batcher's.

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
    """Cluster id of each row of ``x`` [n, d]: balanced hierarchical 2-means (every split halves a
    node exactly, by sorting its rows on x . (c_1 - c_2)) until nodes have at most ``size`` rows.
    All nodes of a level are split at once (segment sums), so the cost is O(n d log(n / size))."""
    n = len(x)
    x = torch.nn.functional.normalize(x.float(), dim=1)
    order = torch.arange(n)
    start, length = torch.zeros(1, dtype=torch.long), torch.tensor([n])
    g = torch.Generator().manual_seed(seed)
    while int(length.max()) > size:
        s = len(length)
        seg = torch.repeat_interleave(torch.arange(s), length)
        within = torch.arange(n) - start[seg]
        r1 = (torch.rand(s, generator=g) * length).long()
        r2 = (r1 + 1 + (torch.rand(s, generator=g) * (length - 1)).long()) % length.clamp(min=1)
        c1, c2 = x[order[start + r1]], x[order[start + r2]]
        left_len = length - length // 2
        for _ in range(iters):
            key = (x[order] * (c1 - c2)[seg]).sum(1)              # larger: nearer c_1
            perm = torch.argsort(-key, stable=True)
            perm = perm[torch.argsort(seg[perm], stable=True)]     # by node, then by key within it
            order = order[perm]
            left = within < left_len[seg]
            xs = x[order]
            c1 = torch.zeros(s, x.shape[1]).index_add_(0, seg[left], xs[left])
            c2 = torch.zeros(s, x.shape[1]).index_add_(0, seg[~left], xs[~left])
        start = torch.stack([start, start + left_len], 1).reshape(-1)
        length = torch.stack([left_len, length // 2], 1).reshape(-1)
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
        self.cluster_size, self.warmup, self.every = min(cluster_size, batch_size), warmup, max(1, recluster_every)
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
        """Cluster id of each query in ``epoch``'s layout, or None for random batches."""
        size = self.size_at(epoch)
        if size == 1 or self.labels is None:
            return None
        if size == self.cluster_size:
            return self.labels
        # a curriculum stage below C: split each cluster into consecutive parts of ``size``
        order = torch.argsort(self.labels, stable=True)
        counts = torch.bincount(self.labels)
        first = torch.cumsum(counts, 0) - counts
        within = torch.arange(self.n) - first[self.labels[order]]
        sub = torch.empty(self.n, dtype=torch.long)
        sub[order] = self.labels[order] * self.cluster_size + within // size
        return torch.unique(sub, return_inverse=True)[1]

    def batch(self, step: int) -> np.ndarray:
        epoch, i = self.position(step)
        if epoch != self._perm_epoch:
            grp = self.groups(epoch)
            rng = np.random.default_rng([self.seed, epoch, 17])
            if grp is None:
                self._perm = rng.permutation(self.n)
            else:
                by = torch.argsort(grp, stable=True).numpy()
                counts = torch.bincount(grp).numpy()
                parts = np.split(by, np.cumsum(counts)[:-1])
                self._perm = np.concatenate([parts[c] for c in rng.permutation(len(parts))])
            self._grp = grp
            self._perm_epoch = epoch
        return self._perm[i * self.batch_size : (i + 1) * self.batch_size]

    def log_batch_count(self, rows: torch.Tensor, queries: torch.Tensor | None = None) -> torch.Tensor:
        """log c_i(rows): ``rows`` [1 or B, m] (shared or per query), ``queries`` [B] -> [B, m]."""
        grp = getattr(self, "_grp", None)
        if grp is None or queries is None:
            return super().log_batch_count(rows, queries)
        b, n = self.batch_size, self.n
        rows = rows.cpu().reshape(len(rows), -1)
        out = torch.empty(len(queries), rows.shape[1])
        members: dict[int, list[int]] = {}
        for qi in queries.tolist():
            members.setdefault(int(grp[qi]), None)
        for c in members:
            members[c] = (grp == c).nonzero().flatten().tolist()
        w_all = self.log_w[rows].exp().double()                 # W(j)
        for r, qi in enumerate(queries.tolist()):
            loc: dict[int, float] = {}
            own: dict[int, float] = {}
            for m in members[int(grp[qi])]:
                tgt = own if m == qi else loc
                for t in self.positives[m]:
                    tgt[t] = tgt.get(t, 0.0) + 1.0 / len(self.positives[m])
            cs = len(members[int(grp[qi])])
            a = (b - cs) / max(1, n - cs) if b > cs else 0.0
            rr = rows[r if len(rows) > 1 else 0].tolist()
            lv = torch.tensor([loc.get(t, 0.0) for t in rr], dtype=torch.float64)
            ov = torch.tensor([own.get(t, 0.0) for t in rr], dtype=torch.float64)
            c = lv + a * (w_all[r if len(rows) > 1 else 0] - lv - ov).clamp(min=0)
            out[r] = c.log().float()
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
