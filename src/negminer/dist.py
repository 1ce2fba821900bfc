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

A rank that dies (killed, out of memory) or hangs: the others' next collective fails, at once when the
backend sees the connection close, else after ``--dist-timeout`` seconds (the process group's timeout, which
gloo enforces on every collective). Every collective here turns that failure into ``RankFailed``, one line
naming this rank and the cause (``guard`` adds where the last checkpoint is), instead of the backend's
traceback; the broken process group is then left as it is (destroying it may wait on the lost peer).
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import os
import re
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from negminer.errors import NegminerError


class RankFailed(NegminerError):
    """A collective failed under torchrun: another process was lost or did not answer within --dist-timeout.
    The run stopped on this rank; its last checkpoint is intact."""

    exit_code = 1

    def __init__(self, message: str, timeout: bool = False):
        super().__init__(message)
        self.timeout = timeout


_TIMEOUT_S = 1800.0  # the process group's timeout (init_from_env), named in the message
_FAILED: RankFailed | None = None  # set when a collective failed: the group is broken
# an error from the backend, not from our own code: DistError, or a RuntimeError whose text names the backend or
# a lost connection (gloo raises plain RuntimeErrors: "[.../gloo/transport/tcp/pair.cc:553] Connection closed by
# peer [127.0.0.1]:35010. ...", "[.../unbound_buffer.cc:129] Timed out waiting 5000ms for send operation ...")
_BACKEND = ("gloo", "nccl", "connection closed by peer", "connection reset by peer", "broken pipe")
_LOST = ("connection closed", "connection reset", "broken pipe", "remote worker", "peer")
_TIMED_OUT = ("timed out", "timeout", "timing out")


def is_backend_failure(e: BaseException) -> bool:
    """True if ``e`` is a collective's failure (with torch.distributed initialised), not any other RuntimeError."""
    if not (dist.is_available() and dist.is_initialized()) or isinstance(e, NegminerError):
        return False
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    return isinstance(e, RuntimeError) and any(m in str(e).lower() for m in _BACKEND)


def rank_failed(e: BaseException) -> RankFailed:
    """The one-line error of this rank for the backend's failure ``e``; marks the process group broken."""
    global _FAILED
    text = re.sub(r"^\s*\[[^\]]*\]\s*", "", str(e))  # gloo's "[file.cc:line] " prefix
    text = (text.strip().splitlines() or [type(e).__name__])[0].split(". ", 1)[0].rstrip(". ")
    text = text if len(text) <= 160 else text[:157] + "..."
    try:
        backend = str(dist.get_backend())
    except Exception:  # noqa: BLE001 - only for the message
        backend = "torch.distributed"
    low = str(e).lower()
    timeout = any(m in low for m in _TIMED_OUT)
    rank = dist.get_rank() if dist.is_initialized() else _CURRENT.rank
    if timeout:
        what = f"no answer from another process within --dist-timeout {_TIMEOUT_S:g} s"
    elif any(m in low for m in _LOST):
        what = "lost another process during a collective"
    else:
        what = "a collective failed"
    _FAILED = RankFailed(f"rank {rank}: {what} ({backend}: {text})", timeout=timeout)
    return _FAILED


def _collective(fn):
    """Runs a collective: the backend's failure becomes ``RankFailed`` where it happens, before any signal
    handler of the training loop is restored (see ``guard``)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if not is_backend_failure(e):
                raise
            raise rank_failed(e) from None

    return run


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

    @_collective
    def gather(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """All ranks' shares (``share(n)`` of n rows each) concatenated in rank order; the gradient flows back to
        this rank's rows."""
        if not self.on:
            return x
        return _Gather.apply(x, self, n)

    @_collective
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

    @_collective
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

    @_collective
    def _reduce_(self, t: torch.Tensor, op) -> torch.Tensor:
        if self.on:
            x = t.to(self.device)
            dist.all_reduce(x, op)
            t.copy_(x)
        return t

    @_collective
    def broadcast(self, t: torch.Tensor | None, shape, dtype) -> torch.Tensor:
        """Rank 0's tensor ``t`` on every rank (the others pass None)."""
        if not self.on:
            return t
        buf = t.to(self.device) if self.main else torch.empty(shape, dtype=dtype, device=self.device)
        dist.broadcast(buf, 0)
        return buf.cpu()

    @_collective
    def same(self, t: torch.Tensor) -> bool:
        """True if ``t`` is equal on every rank."""
        if not self.on:
            return True
        lo, hi = t.to(self.device).clone(), t.to(self.device).clone()
        dist.all_reduce(lo, dist.ReduceOp.MIN)
        dist.all_reduce(hi, dist.ReduceOp.MAX)
        return bool(torch.equal(lo, hi))

    @_collective
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

    @_collective
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
    global _CURRENT, _TIMEOUT_S, _FAILED
    _TIMEOUT_S, _FAILED = float(timeout_s), None
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
    """Leave the process group; a broken one (a collective failed) is left to the process's exit, since
    destroying it may wait on the lost peer."""
    global _CURRENT
    if dist.is_initialized() and _FAILED is None:
        dist.destroy_process_group()
    _CURRENT = Dist()


def resume_hint(run_dir) -> str:
    ckpt = os.path.join(str(run_dir), "checkpoint")
    if os.path.isdir(ckpt) or os.path.isdir(ckpt + ".prev"):
        return f"the last checkpoint in {ckpt} is intact: fix the cause and rerun with --resume"
    return "no checkpoint was written yet: fix the cause and rerun"


@contextmanager
def guard(run_dir):
    """Around a run under torchrun: a collective's failure (another rank lost, or silent past --dist-timeout)
    leaves as one ``RankFailed`` line that names this rank, the cause and the checkpoint to resume from.

    torchrun sends SIGTERM to the surviving ranks as soon as it sees one die, which may land after the
    training loop has put back the default handler and before the line is printed; while this guard holds,
    a SIGTERM after a collective failed is ignored (the process is about to exit 1), any other does what it
    did before."""
    old = None
    if _CURRENT.on and threading.current_thread() is threading.main_thread():
        old = signal.getsignal(signal.SIGTERM)

        def on_term(signum, frame):
            if _FAILED is not None:
                return
            if callable(old):
                return old(signum, frame)
            if old != signal.SIG_IGN:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    except RankFailed as e:
        raise RankFailed(f"{e}; {resume_hint(run_dir)}", timeout=e.timeout) from None
    except Exception as e:
        if not (_CURRENT.on and is_backend_failure(e)):
            raise
        raise RankFailed(f"{rank_failed(e)}; {resume_hint(run_dir)}", timeout=_FAILED.timeout) from None
    finally:
        if old is not None and _FAILED is None:  # after a failure keep ignoring torchrun's SIGTERM until exit
            signal.signal(signal.SIGTERM, old)


def record_error(message: str, consequence: bool = False) -> None:
    """Under torchrun: write ``message`` to this worker's error file (TORCHELASTIC_ERROR_FILE), so that
    torchrun's failure report shows it instead of a pointer to its documentation. ``consequence``: this rank
    only observed another's failure; its timestamp is rounded up, so that the rank that died first stays the
    report's root cause (torchrun picks the smallest whole-second timestamp)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    now = time.time()
    data = {"message": {"message": message, "extraInfo": {
        "py_callstack": message, "timestamp": str(math.ceil(now) if consequence else int(now))}}}
    try:
        with open(path, "w") as f:
            json.dump(data, f)
    except OSError:
        pass
