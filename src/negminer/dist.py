"""Several processes on torch.distributed (``torchrun``): which rank this is, and the few collectives the
trainer needs.

Data parallelism with a replicated loss. Every rank holds the step's global batch (W x --batch-size
queries: the same indices on every rank, from the seed), encodes its own slice of it (queries, positives,
its share of the drawn negatives) and all-gathers the embeddings; the sampler, the loss and the store
update then run on the global batch, identically on every rank. So the loss of every rank *is* the
single-process loss of the global batch, in-batch and hard negatives are global with their labels
aligned by construction, and the gradient that reaches rank r's embeddings is the slice of dL/dE that
belongs to them: ``gather``'s backward keeps the local slice (no reduce-scatter: every rank's dL/dE is
the same). Each rank backpropagates its slice into its copy of the towers, and one all-reduce (sum) of
the parameter gradients before the optimiser step gives every rank the single-process gradient. With
GradCache that all-reduce comes after the last chunk, never per chunk.

One part is split, not replicated: the sampler's pass over the store. Each rank scores its share of the
candidates, with the noise that one pass over all of them gives those candidates, and the ranks merge their
partial passes (top-(k+1) keys, log Z, watched logits: ``merge`` in samplers/gumbel.py), so the draw is the
single-process draw; with replacement each slot picks a shard by its log-partition (the same law, other
noise). The store's rows are replicated (N x d per rank; replicas compared at each checkpoint) unless
``--store-shard``: then rank r holds rows share(N) only, scores them, keeps its part of every write, and
reads other rows (refreshers, cross weights, checkpoints) through one collective (store/store.py).

Launch (one node, 4 processes; several nodes: --nnodes, --node-rank, --master-addr):
    torchrun --nproc_per_node 4 -m negminer train --data D --out RUN --batch-size 64
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # where collectives run (the GPU of this rank under NCCL)

    @property
    def on(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This rank's contiguous share of n items (sizes differ by at most one)."""
        lo = self.rank * n // self.world
        return slice(lo, (self.rank + 1) * n // self.world)

    def gather(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """All ranks' shares (``share(n)`` of n rows each) concatenated in rank order; the gradient flows back to
        this rank's rows."""
        if not self.on:
            return x
        return _Gather.apply(x, self, n)

    def all_reduce_grads(self, params) -> None:
        """Sum every parameter gradient over the ranks (one flat buffer per dtype and device)."""
        if not self.on:
            return
        groups: dict = {}
        for p in params:
            if p.grad is not None:
                groups.setdefault((p.grad.dtype, p.grad.device), []).append(p)
        for ps in groups.values():
            flat = torch.cat([p.grad.reshape(-1) for p in ps])
            dist.all_reduce(flat)
            o = 0
            for p in ps:
                p.grad.copy_(flat[o:o + p.grad.numel()].view_as(p.grad))
                o += p.grad.numel()

    def stack(self, t: torch.Tensor) -> torch.Tensor:
        """[W, ...]: every rank's ``t`` (the same shape on every rank), without gradient."""
        if not self.on:
            return t.unsqueeze(0)
        x = t.detach().to(self.device).contiguous()
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x)
        return torch.stack(parts).to(t.device)

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """In place: the elementwise sum of ``t`` over the ranks."""
        return self._reduce_(t, dist.ReduceOp.SUM)

    def max_(self, t: torch.Tensor) -> torch.Tensor:
        """In place: the elementwise maximum of ``t`` over the ranks."""
        return self._reduce_(t, dist.ReduceOp.MAX)

    def _reduce_(self, t: torch.Tensor, op) -> torch.Tensor:
        if self.on:
            x = t.to(self.device)
            dist.all_reduce(x, op)
            t.copy_(x)
        return t

    def broadcast(self, t: torch.Tensor | None, shape, dtype) -> torch.Tensor:
        """Rank 0's tensor ``t`` on every rank (the others pass None)."""
        if not self.on:
            return t
        buf = t.to(self.device) if self.main else torch.empty(shape, dtype=dtype, device=self.device)
        dist.broadcast(buf, 0)
        return buf.cpu()

    def same(self, t: torch.Tensor) -> bool:
        """True if ``t`` is equal on every rank."""
        if not self.on:
            return True
        lo, hi = t.to(self.device).clone(), t.to(self.device).clone()
        dist.all_reduce(lo, dist.ReduceOp.MIN)
        dist.all_reduce(hi, dist.ReduceOp.MAX)
        return bool(torch.equal(lo, hi))

    def agree(self, value: float) -> float:
        """Rank 0's value on every rank (clocks: time budgets and timed evaluations decide alike)."""
        if not self.on:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(t, 0)
        return float(t)

    def sharded(self, model):
        """``model`` whose encoders (and search, see ``Sharded``) split their work over the ranks; itself in
        one process."""
        return Sharded(model, self) if self.on else model

    def barrier(self) -> None:
        if self.on:
            dist.barrier()


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, d: Dist, n: int):
        sizes = [(r + 1) * n // d.world - r * n // d.world for r in range(d.world)]
        ctx.d, ctx.n = d, n
        m = max(sizes)
        if m == 0:
            return x.new_zeros(0, *x.shape[1:])
        buf = x.new_zeros(m, *x.shape[1:])  # all_gather wants equal shapes: pad to the largest share
        buf[:len(x)] = x
        parts = [torch.empty_like(buf) for _ in sizes]
        dist.all_gather(parts, buf)
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, g):
        return g[ctx.d.share(ctx.n)].contiguous(), None, None


class Sharded:
    """An encoder whose ``encode_queries`` / ``encode_targets`` encode this rank's share of the texts and return
    every rank's embeddings, and whose ``search`` ranks this rank's share of the queries and gathers the
    results (evaluation sharded over the ranks)."""

    def __init__(self, model, d: Dist):
        self.model, self.d = model, d

    def _encode(self, fn, items, batch_size: int = 128, progress: bool = False) -> torch.Tensor:
        mine = items[self.d.share(len(items))]
        e = (torch.as_tensor(fn(mine, batch_size=batch_size, progress=progress)) if len(mine)
             else torch.zeros(0, self.model.dim))
        return self.d.gather(e.float().to(self.d.device), len(items)).cpu()

    def encode_queries(self, texts, batch_size: int = 128, progress: bool = False) -> torch.Tensor:
        return self._encode(self.model.encode_queries, list(texts), batch_size, progress)

    def encode_targets(self, items, batch_size: int = 128, progress: bool = False) -> torch.Tensor:
        return self._encode(self.model.encode_targets, list(items), batch_size, progress)

    def search(self, topk, q: torch.Tensor, t: torch.Tensor, k: int):
        """``topk(q, t, k) -> (scores, indices)`` of this rank's share of the queries, gathered."""
        s, i = topk(q[self.d.share(len(q))], t, k)
        return tuple(self.d.gather(x.to(self.d.device), len(q)).cpu() for x in (s, i))


_CURRENT = Dist()


def current() -> Dist:
    return _CURRENT


def init_from_env(timeout_s: float = 1800.0, device: str = "auto") -> Dist:
    """Join the process group torchrun describes (WORLD_SIZE > 1 in the environment); NCCL on GPUs, gloo on CPU.
    A collective that waits longer than ``timeout_s`` (a rank died or hangs) raises instead of hanging."""
    global _CURRENT
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _CURRENT
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    _CURRENT = Dist(dist.get_rank(), dist.get_world_size(), local,
                    torch.device("cuda", local) if cuda else torch.device("cpu"))
    return _CURRENT


def shutdown() -> None:
    global _CURRENT
    if dist.is_initialized():
        dist.destroy_process_group()
    _CURRENT = Dist()
