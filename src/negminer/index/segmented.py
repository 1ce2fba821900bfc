"""Batched k-means over many groups of rows at once (one tree level per call), and their balls.

A level of the tree is a permutation ``perm`` of store rows and segment ``bounds`` (node i holds
perm[bounds[i]:bounds[i+1]]). Splitting every big node of a level with its own k-means, one node at a
time, costs a Python round trip per node (10^5 to 10^6 nodes at 2 x 10^7 rows); here nodes of similar
size are padded into [G, n, d] blocks and clustered together with batched matrix products (bmm), so a
level costs O(rows x b x d) flops in a few dozen calls. Nodes larger than a block are cut into row
chunks for the final assignment.
"""

from __future__ import annotations

import math

import torch

NEG_INF = -math.inf
BLOCK_ROWS = 1 << 18  # rows (times d floats) per padded block


def ranges(lo: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Concatenation of arange(lo[i], lo[i] + size[i]) over i."""
    start = size.cumsum(0) - size
    return torch.repeat_interleave(lo - start, size) + torch.arange(int(size.sum()))


def balls(emb_fn, perm: torch.Tensor, bounds: torch.Tensor, nodes: torch.Tensor, chunk: int = 1 << 18):
    """Mean and radius (max distance to the mean) of each node in ``nodes``: [M, d], [M]."""
    size = bounds[nodes + 1] - bounds[nodes]
    pos = ranges(bounds[nodes], size)
    seg = torch.repeat_interleave(torch.arange(len(nodes)), size)
    sums = None
    for a in range(0, len(pos), chunk):
        x = emb_fn(perm[pos[a:a + chunk]])
        if sums is None:
            sums = torch.zeros(len(nodes), x.shape[1])
        sums.index_add_(0, seg[a:a + chunk], x)
    c = sums / size.clamp(min=1).unsqueeze(1).float()
    r = torch.zeros(len(nodes))
    for a in range(0, len(pos), chunk):
        x, s = emb_fn(perm[pos[a:a + chunk]]), seg[a:a + chunk]
        r.scatter_reduce_(0, s, (x - c[s]).norm(dim=1), reduce="amax")
    return c, r


def split(emb_fn, perm, bounds, nodes, k, iters: int, train_per_centre: int, g: torch.Generator,
          part: torch.Tensor, gain: float | None = None, force: float = math.inf) -> torch.Tensor:
    """k-means of each node in ``nodes`` into ``k[i]`` parts (seeded by random rows, trained on at most
    ``train_per_centre`` rows per centre, every row assigned); writes each row's part into ``part``
    (indexed like ``perm``). A node k-means cannot separate (duplicates) is cut evenly.

    ``gain``: refinement mode for nodes that already fit a leaf, trained on all rows: seeds chosen
    farthest-first until every row lies within ``gain`` x the node's radius of a seed (at most k[i] and
    size / 4: a small node is not shattered into single rows; each straggler or stray fragment gets its
    own seed); a node that needs more is not split (every
    row stays in part 0: it is one spread group, not a mixture of tight ones) unless its radius exceeds
    ``force`` (then it gets k[i] seeds).
    Returns, per node, whether it was split."""
    size = bounds[nodes + 1] - bounds[nodes]
    order = size.argsort(stable=True)
    nodes, size, k = nodes[order], size[order], k[order]
    bucket = torch.ceil(torch.log2(size.float())).long()
    done = torch.ones(len(nodes), dtype=torch.bool)
    i = 0
    while i < len(nodes):
        n_max = 1 << int(bucket[i])
        j = i + 1
        while j < len(nodes) and int(bucket[j]) == int(bucket[i]) and (j - i + 1) * n_max <= BLOCK_ROWS:
            j += 1
        done[i:j] = _split_block(emb_fn, perm, bounds[nodes[i:j]], size[i:j], k[i:j], iters, train_per_centre, g,
                                 part, gain, force)
        i = j
    return torch.empty_like(done).scatter_(0, order, done)


def _split_block(emb_fn, perm, lo, size, k, iters, per, g, part, gain, force):
    G, b, n_max = len(lo), int(k.max()), int(size.max())
    t = size if gain is not None else torch.minimum(size, per * k)
    t_max = int(t.max())
    # a random subset of each node's rows: the t smallest of random keys (first k of them seed the centres)
    if G == 1:
        pick = torch.randperm(n_max, generator=g)[:t_max].unsqueeze(0)
    else:
        keys = torch.rand(G, n_max, generator=g).masked_fill(torch.arange(n_max) >= size.unsqueeze(1), 2.0)
        pick = keys.topk(t_max, dim=1, largest=False).indices
    tv = torch.arange(t_max) < t.unsqueeze(1)
    x = emb_fn(perm[(lo.unsqueeze(1) + pick.clamp(max=n_max - 1))[tv]])
    xt = torch.zeros(G, t_max, x.shape[1])
    xt[tv] = x
    split = torch.ones(G, dtype=torch.bool)
    if gain is None:
        c = xt[:, :b].clone()
    else:  # as many seeds as it takes to cover every row within gain x the node's radius (at most b)
        c, cover, r_node = _farthest_first(xt, tv, b)
        fits = cover <= gain * r_node.unsqueeze(1)
        fits &= torch.arange(1, b + 1) <= (size // 4).clamp(min=2).unsqueeze(1)  # parts of 4 rows on average
        split = fits.any(1) | (r_node > force)
        k = torch.where(fits.any(1), fits.float().argmax(1) + 1, torch.where(split, k, torch.ones_like(k)))
    cv = torch.arange(b) < k.unsqueeze(1)                              # [G, b] centres in use
    gi = torch.arange(G).unsqueeze(1).expand(G, t_max)[tv]
    for _ in range(iters):
        a = _assign(xt, c, cv)[tv]
        flat = gi * b + a
        sums = torch.zeros(G * b, x.shape[1]).index_add_(0, flat, x)
        cnt = torch.bincount(flat, minlength=G * b).unsqueeze(1)
        c = torch.where(cnt > 0, sums / cnt.clamp(min=1), c.reshape(G * b, -1)).view(G, b, -1)
    # every row to its nearest centre
    if G == 1 and n_max > BLOCK_ROWS and gain is None:
        lab = torch.cat([_assign(emb_fn(perm[int(lo[0]) + a:int(lo[0]) + min(n_max, a + BLOCK_ROWS)]).unsqueeze(0), c, cv)[0]
                         for a in range(0, n_max, BLOCK_ROWS)]).unsqueeze(0)
        valid = torch.ones(1, n_max, dtype=torch.bool)
    else:
        valid = torch.arange(n_max) < size.unsqueeze(1)
        xa = torch.zeros(G, n_max, x.shape[1])
        xa[valid] = emb_fn(perm[(lo.unsqueeze(1) + torch.arange(n_max))[valid]])
        lab = _assign(xa, c, cv)
    one = lab.masked_fill(~valid, b).amin(1) == lab.masked_fill(~valid, -1).amax(1)
    if bool(one.any()):  # cut evenly: rank * k // size
        even = torch.arange(n_max).unsqueeze(0) * k.unsqueeze(1) // size.unsqueeze(1)
        lab = torch.where(one.unsqueeze(1), even, lab)
    if gain is not None:
        split &= ~one
        lab = lab * split.unsqueeze(1)
    part[(lo.unsqueeze(1) + torch.arange(n_max))[valid]] = lab[valid]
    return split


def _farthest_first(x, valid, b):
    """Gonzalez's k-centre traversal: [G, b, d] seeds (the row farthest from the mean, then each next
    the row farthest from those chosen), [G, b] the covering radius after each seed (every row lies
    within it of one of the first i + 1 seeds), and [G] the radius about the mean."""
    w = valid.unsqueeze(2).float()
    mean = (x * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp(min=1)
    dist = (x - mean).norm(dim=2).masked_fill(~valid, -1.0)
    r_node = dist.amax(1)
    seeds, cover = [], []
    for i in range(b):
        c = x.gather(1, dist.argmax(1).view(-1, 1, 1).expand(-1, 1, x.shape[2]))
        seeds.append(c)
        to_c = (x - c).norm(dim=2).masked_fill(~valid, -1.0)
        dist = to_c if i == 0 else torch.minimum(dist, to_c)
        cover.append(dist.amax(1))
    return torch.cat(seeds, 1), torch.stack(cover, 1), r_node


def _assign(x: torch.Tensor, c: torch.Tensor, cv: torch.Tensor) -> torch.Tensor:
    """[G, n] nearest centre (Euclidean) of each row among its group's centres in use."""
    s = torch.baddbmm(-0.5 * (c * c).sum(2).unsqueeze(1), x, c.transpose(1, 2))
    return s.masked_fill(~cv.unsqueeze(1), NEG_INF).argmax(2)
