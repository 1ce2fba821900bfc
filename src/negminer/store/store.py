"""TargetStore: for every target its id, its input (text, and its token ids, tokenised once by the
target tower: one flat int32 array plus offsets), a cached embedding and the step at which it was
last encoded (-1: never).

Embeddings are fp32, fp16 or bf16; in memory on the CPU or an accelerator, or memory-mapped from
a ``.npy`` file (N x d beyond RAM). Scoring (``score_chunks``) reads the store in chunks, in its own
dtype where the hardware multiplies it natively (CPU: bf16 and fp32; fp16 chunks are widened to
fp32), into reused buffers, on the scoring device; a CPU or memory-mapped store feeding a GPU goes
through pinned staging buffers. Whoever indexes the store (the oldest-first refresh queue, ANCE's
index) subscribes to ``listeners`` and learns which rows changed (and whether they were re-encoded).
``view`` (None, or ``f(emb, rows)``) transforms every read of the embeddings (scoring, gathers): the
corrector network's on-the-fly mode.

Sharded (``shard=`` a ``negminer.dist.Dist`` under torchrun): this rank holds the rows ``shard.share(N)``
only (ids, inputs and ages stay whole). Scoring reads local rows (the sampler's pass scores this rank's
rows, samplers/base.py); ``write`` keeps the local rows of what it is given; reading any rows
(``embeddings``, ``scores``, ``save``) is a collective every rank makes at the same time (each fills its
rows, one all-reduce), which the replicated training loop guarantees.

Re-encoding rows (``encode``) runs the target tower without gradient, in eval mode (the store holds
eval-mode embeddings), under the trainer's autocast, writes rows and ages and counts
``target_encodes``; ``embed`` does the same without writing or counting; ``write`` stores
embeddings computed elsewhere at no cost.

Example::

    store = TargetStore(dataset.target_ids, dataset.target_inputs(), dim=384, dtype="bf16")
    store.encode(range(store.n), model, step=0)              # fill
    for start, scores in store.score_chunks(q):              # [B, c] per chunk, never [B, N]
        ...
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_NP = {"fp32": np.float32, "fp16": np.float16, "bf16": np.uint16}  # bf16 is kept as its 16 raw bits
CPU_CHUNK, GPU_CHUNK = 16384, 1 << 20


class TargetStore:
    def __init__(self, ids: Sequence[str], inputs: Sequence[str], dim: int, dtype: str = "fp32",
                 path: str | Path | None = None, device: str | torch.device = "cpu", reopen: bool = False,
                 shard=None):
        if dtype not in DTYPES:
            raise ValueError(f"store dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        self.ids, self.inputs, self.dim, self.dtype = ids, inputs, dim, dtype
        self.n = len(ids)
        self.dist = shard if shard is not None and shard.on else None
        part = self.dist.share(self.n) if self.dist is not None else slice(0, self.n)
        self.lo, self.hi = part.start, part.stop  # the rows this process holds
        self.path = Path(path) if path is not None else None
        self.device = torch.device("cpu") if self.path is not None else torch.device(device)
        if self.path is None:
            self.emb = torch.zeros(self.hi - self.lo, dim, dtype=DTYPES[dtype], device=self.device)
        else:
            self.emb = self._open_map(reopen)
        self.age = torch.full((self.n,), -1, dtype=torch.int32)
        self.target_encodes = 0
        self.listeners: list = []     # callables (rows [m] long CPU tensor, step) after every write
        self.feed_device = None       # set to a GPU when a CPU store is scored there (pinned staging)
        self.view = None              # f(emb, rows) applied to every read (the corrector's scored mode)
        self._tokens = None           # (key, flat ids, offsets), built on first use for a target tower
        self._buf: dict = {}

    def _open_map(self, reopen: bool) -> torch.Tensor:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mm = None
        if reopen and self.path.exists():
            try:
                mm = np.load(self.path, mmap_mode="r+")
            except (ValueError, OSError):
                mm = None
            if mm is not None and (mm.shape != (self.hi - self.lo, self.dim) or mm.dtype != _NP[self.dtype]):
                raise ValueError(f"{self.path}: holds {mm.shape} {mm.dtype}, not the store's "
                                 f"({self.hi - self.lo}, {self.dim}) {self.dtype}")
        if mm is None:
            mm = np.lib.format.open_memmap(self.path, mode="w+", dtype=_NP[self.dtype],
                                           shape=(self.hi - self.lo, self.dim))
        self._mm = mm
        t = torch.from_numpy(mm)
        return t.view(torch.bfloat16) if self.dtype == "bf16" else t

    @property
    def nbytes(self) -> int:
        return (self.hi - self.lo) * self.dim * DTYPES[self.dtype].itemsize

    @property
    def sharded(self) -> bool:
        return self.dist is not None

    def _holds(self, rows: torch.Tensor) -> torch.Tensor:
        """[len(rows)] bool: the rows this process holds."""
        return (rows >= self.lo) & (rows < self.hi)

    def _read(self, rows: torch.Tensor) -> torch.Tensor:
        """Raw embeddings of any ``rows`` (global), in the store's dtype on its device; sharded: collective."""
        if self.dist is None or not len(rows):  # (rows are the same on every process: all skip alike)
            rows = rows.to(self.emb.device)  # index_select: 30x faster than emb[rows] for bf16 rows on CPU
            return torch.index_select(self.emb, 0, rows) if rows.dim() == 1 else self.emb[rows]
        mine = self._holds(rows)
        out = torch.zeros(len(rows), self.dim, device=self.dist.device)
        out[mine.to(out.device)] = self.emb[(rows[mine] - self.lo).to(self.emb.device)].to(out.device, torch.float32)
        return self.dist.sum_(out).to(self.emb.device, DTYPES[self.dtype])

    # ---- token ids ------------------------------------------------------------------------
    def token_ids(self, rows, model) -> list[list[int]]:
        """The target tower's token ids of ``rows`` (tokenised once, then read from the table)."""
        key = (id(model.target_tower), model.target_max_length)
        if self._tokens is None or self._tokens[0] != key:
            flat, lens = [], []
            for s in range(0, self.n, 4096):  # small calls: the tokenizer's Python lists are transient
                ids = model.target_token_ids([self.inputs[i] for i in range(s, min(self.n, s + 4096))])
                lens.extend(map(len, ids))
                flat.append(np.fromiter((t for x in ids for t in x), dtype=np.int32))
            offsets = np.zeros(self.n + 1, dtype=np.int64)
            np.cumsum(lens, out=offsets[1:])
            self._tokens = (key, np.concatenate(flat) if flat else np.zeros(0, np.int32), offsets)
        _, flat, off = self._tokens
        rows = rows.tolist() if torch.is_tensor(rows) else rows
        return [flat[off[r]:off[r + 1]].tolist() for r in rows]

    def features(self, rows, model) -> dict[str, torch.Tensor]:
        """Batched tower inputs of ``rows`` (same as ``model.tokenize_targets`` on their texts)."""
        return model.collate_targets(self.token_ids(rows, model))

    # ---- scoring --------------------------------------------------------------------------
    @property
    def scoring_device(self) -> torch.device:
        return torch.device(self.feed_device) if self.feed_device is not None else self.device

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype scores are computed in: the store's own, except fp16 on a CPU (no native fp16 matmul)."""
        d = DTYPES[self.dtype]
        return torch.float32 if (d == torch.float16 and self.scoring_device.type == "cpu") else d

    def _buffer(self, name, shape, dtype, device, pin=False) -> torch.Tensor:
        n = math.prod(shape)
        buf = self._buf.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype or buf.device != device:
            buf = torch.empty(n, dtype=dtype, device=device)
            if pin and device.type == "cpu" and torch.cuda.is_available():
                buf = buf.pin_memory()
            self._buf[name] = buf
        return buf[:n].view(shape)

    def _rows_to_device(self, lo: int, hi: int, rows: torch.Tensor | None, slot: int) -> torch.Tensor:
        """Embeddings of candidates lo..hi-1 (rows[lo:hi], or store rows lo..hi-1) on the scoring device."""
        dev = self.scoring_device
        if rows is None:
            src = self.emb[lo - self.lo:hi - self.lo]
        else:
            r = rows[lo:hi] - self.lo if self.lo else rows[lo:hi]  # local rows (a sharded store scores its own)
            src = torch.index_select(self.emb, 0, r.to(self.emb.device),
                                     out=self._buffer(f"gather{slot}", (hi - lo, self.dim), self.emb.dtype, self.emb.device))
        if src.device != dev:  # CPU / memory-mapped store feeding a GPU: via pinned memory
            host = self._buffer(f"pin{slot}", (hi - lo, self.dim), src.dtype, torch.device("cpu"), pin=True)
            host.copy_(src)
            src = host.to(dev, non_blocking=True)
        if src.dtype != self.compute_dtype:
            src = src.to(self.compute_dtype)
        if self.view is not None:
            src = self.view(src, torch.arange(lo, hi) if rows is None else rows[lo:hi].cpu())
        return src

    def chunk_size(self) -> int:
        return GPU_CHUNK if self.scoring_device.type == "cuda" else CPU_CHUNK

    def score_chunks(self, q: torch.Tensor, rows: torch.Tensor | None = None, chunk: int | None = None,
                     spans: list[tuple[int, int]] | None = None):
        """Yield (start, scores [B, c]) with scores = q . e over the candidates (``rows`` [M] of the store,
        default all rows), in the compute dtype on the scoring device, by chunks of ``chunk`` candidates
        (or over the candidate ranges ``spans``, (start, end) each). ``scores`` is a reused buffer: use
        it before the next chunk; it may be overwritten (masking)."""
        dev = self.scoring_device
        chunk = chunk or self.chunk_size()
        m = self.n if rows is None else len(rows)
        qc = q.detach().to(dev, self.compute_dtype)
        for i, (s, e) in enumerate(spans if spans is not None else ((s, min(m, s + chunk)) for s in range(0, m, chunk))):
            emb = self._rows_to_device(s, e, rows, i % 2)
            out = self._buffer(f"scores{i % 2}", (len(qc), e - s), self.compute_dtype, dev)
            torch.matmul(qc, emb.T, out=out)
            yield s, out

    def scores(self, q: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """float32 scores computed as ``score_chunks`` computes them, for a few rows: [m] shared by all
        queries -> [B, m]; [B, m] per query -> [B, m]."""
        dev = self.scoring_device
        qc = q.detach().to(dev, self.compute_dtype)
        flat = rows.reshape(-1).cpu()
        e = self._read(flat).to(dev, self.compute_dtype)
        if self.view is not None:
            e = self.view(e, flat.cpu())
        if rows.dim() == 1:
            return (qc @ e.T).float()
        e = e.view(*rows.shape, self.dim)
        return torch.bmm(e, qc.unsqueeze(2)).squeeze(2).float()

    # ---- reading --------------------------------------------------------------------------
    def checksum(self, chunk: int = 1 << 16) -> torch.Tensor:
        """[3] float64: sums of the embeddings, of their squares weighted by row, and of the ages (replicas
        that agree here are, for practical purposes, the same)."""
        out = torch.zeros(3, dtype=torch.float64)
        for lo in range(0, self.hi - self.lo, chunk):
            e = torch.as_tensor(self.emb[lo:lo + chunk]).to(torch.float64)
            w = torch.arange(self.lo + lo, self.lo + lo + len(e), dtype=torch.float64).add_(1).unsqueeze(1)
            out[0] += e.sum().cpu()
            out[1] += (e.square() * w.to(e.device)).sum().cpu()
        out[2] = self.age.to(torch.float64).sum()
        return out

    def held(self, rows: torch.Tensor) -> torch.Tensor:
        """The ``rows`` this process holds (all of them unless sharded)."""
        return rows if self.dist is None else rows[self._holds(rows)]

    def embeddings(self, rows=None, local: bool = False) -> torch.Tensor:
        """float32 CPU copy of the cached embeddings of ``rows`` (all if None; small N only). ``local``: rows
        this process holds (``held``), read without a collective."""
        if rows is None:
            e = self.emb if self.dist is None else self._read(torch.arange(self.n))
        elif local and self.dist is not None:
            e = self.emb[(torch.as_tensor(rows, dtype=torch.long) - self.lo).to(self.emb.device)]
        else:
            e = self._read(torch.as_tensor(rows, dtype=torch.long).cpu())
        e = e.float().cpu()
        if self.view is not None:
            e = self.view(e, torch.arange(self.n) if rows is None else torch.as_tensor(rows, dtype=torch.long).cpu())
        return e

    # ---- writing --------------------------------------------------------------------------
    def write(self, rows, emb: torch.Tensor, step: int | None) -> None:
        """Store embeddings computed elsewhere; ``step``: when they were encoded (None: moved, not
        re-encoded, as a Nystrom update does: ages kept). Listeners get (rows, step)."""
        rows = torch.as_tensor(rows, dtype=torch.long).cpu()
        if not len(rows):
            return
        if self.dist is None:
            self.emb[rows.to(self.emb.device)] = emb.detach().to(self.emb.device, DTYPES[self.dtype])
        else:  # the rows this process holds
            mine = self._holds(rows)
            self.emb[(rows[mine] - self.lo).to(self.emb.device)] = \
                emb.detach()[mine.to(emb.device)].to(self.emb.device, DTYPES[self.dtype])
        if step is not None:
            self.age[rows] = step
        for fn in self.listeners:
            fn(rows, step)

    @torch.no_grad()
    def encode(self, rows, model, step: int, batch_size: int = 256, progress: bool = False, autocast=None,
               chunk: int = 16384, embed=None) -> torch.Tensor | None:
        """Re-encode ``rows`` with the current target tower (no gradient, eval mode), ``chunk`` rows at
        a time (a full refresh never holds N x d floats); returns the float32 embeddings of at most
        one chunk of rows (None for more). ``embed(rows) -> [len, d]`` replaces ``self.embed`` (torchrun:
        this rank's share, gathered)."""
        rows = torch.as_tensor(list(rows) if not torch.is_tensor(rows) else rows, dtype=torch.long).cpu()
        out = torch.zeros(0, self.dim)
        for s in range(0, len(rows), chunk):
            out = (embed(rows[s:s + chunk]) if embed is not None
                   else self.embed(rows[s:s + chunk], model, batch_size, progress, autocast))
            self.write(rows[s:s + chunk], out, step)
            self.target_encodes += len(out)
        return out if len(rows) <= chunk else None

    @torch.no_grad()
    def embed(self, rows, model, batch_size: int = 256, progress: bool = False, autocast=None) -> torch.Tensor:
        """Fresh float32 CPU embeddings of ``rows`` with the current tower; the store is not changed."""
        rows = torch.as_tensor(list(rows) if not torch.is_tensor(rows) else rows, dtype=torch.long).cpu()
        out = torch.empty(len(rows), self.dim)
        with autocast or nullcontext():
            for s in range(0, len(rows), 65536):
                r = rows[s:s + 65536]
                out[s:s + 65536] = model.encode_target_ids(self.token_ids(r, model), batch_size=batch_size,
                                                           progress=progress)
        return out

    # ---- checkpoint -----------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """Embeddings to ``folder/store.npy`` (chunk by chunk, or a kernel copy of the memory map:
        never a second copy of the store in RAM) and ages to ``folder/store_age.npy``. Sharded: every
        process calls it (chunks are collected from all), the one writing with a ``folder``, the others None."""
        from negminer.fileio import copy_file

        folder = Path(folder) if folder is not None else None
        if self.path is not None and self.dist is None:
            self._mm.flush()
            copy_file(self.path, folder / "store.npy")
        else:
            with open(folder / "store.npy", "wb") if folder is not None else nullcontext() as f:
                if f is not None:
                    np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(_NP[self.dtype])),
                                                             "fortran_order": False, "shape": (self.n, self.dim)})
                for s in range(0, self.n, 1 << 18):
                    part = self.emb[s:s + (1 << 18)] if self.dist is None else self._read(torch.arange(s, min(self.n, s + (1 << 18))))
                    if f is not None:
                        f.write((part.view(torch.int16) if self.dtype == "bf16" else part).cpu().numpy().tobytes())
        if folder is not None:
            np.save(folder / "store_age.npy", self.age.numpy())

    def load(self, folder: Path, target_encodes: int) -> None:
        """Restore what ``save`` wrote (memory-mapped stores: a kernel copy onto ``path``, reopened)."""
        from negminer.fileio import copy_file

        folder = Path(folder)
        src = np.load(folder / "store.npy", mmap_mode="r")
        if src.shape != (self.n, self.dim) or src.dtype != _NP[self.dtype]:
            raise ValueError(f"{folder / 'store.npy'}: {src.shape} {src.dtype} does not match the store "
                             f"({self.n}, {self.dim}) {self.dtype}")
        if self.path is not None and self.dist is None:
            del src
            self._mm = None
            self.emb = None
            copy_file(folder / "store.npy", self.path)
            self.emb = self._open_map(reopen=True)
        else:  # sharded: this process's rows (saved by any number of processes)
            for s in range(self.lo, self.hi, 1 << 18):
                part = torch.from_numpy(np.array(src[s:min(self.hi, s + (1 << 18))]))
                self.emb[s - self.lo:s - self.lo + len(part)] = \
                    (part.view(torch.bfloat16) if self.dtype == "bf16" else part).to(self.emb.device)
            if self.path is not None:
                self._mm.flush()
        self.age[:] = torch.from_numpy(np.load(folder / "store_age.npy")).to(torch.int32)
        self.target_encodes = target_encodes
        for fn in self.listeners:
            fn(None, None)  # everything changed
