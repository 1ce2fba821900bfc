"""TargetStore: for every target its id, its input (the text, and its token ids, tokenised once by
the target tower and kept as one flat int32 array plus offsets), a cached embedding (fp32, fp16 or
bf16; in memory or memory-mapped from disk, so N x d beyond RAM works) and the step at which it was
last encoded (-1: never).

Re-encoding rows (``encode``) runs the target tower without gradient on the kept token ids, writes
the embeddings back, sets their age and counts ``target_encodes``; ``embed`` does the same without
writing or counting (diagnostics); ``features`` batches rows for a with-gradient forward; ``write``
stores embeddings computed elsewhere (the trainer's fresh encodings of drawn targets) at no cost.

Example::

    store = TargetStore(dataset.target_ids, dataset.target_inputs(), dim=384, dtype="fp16")
    store.encode(range(store.n), model, step=0)          # fill
    emb = store.embeddings()                            # float32 view for scoring
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TargetStore:
    def __init__(self, ids: Sequence[str], inputs: Sequence[str], dim: int, dtype: str = "fp32",
                 path: str | Path | None = None):
        if dtype not in DTYPES:
            raise ValueError(f"store dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        self.ids, self.inputs, self.dim, self.dtype = ids, inputs, dim, dtype
        self.n = len(ids)
        self.path = Path(path) if path is not None else None
        if self.path is None:
            self.emb = torch.zeros(self.n, dim, dtype=DTYPES[dtype])
        else:  # memory-mapped: bf16 is kept as its 16 raw bits
            self.path.parent.mkdir(parents=True, exist_ok=True)
            np_dtype = {"fp32": np.float32, "fp16": np.float16, "bf16": np.uint16}[dtype]
            mm = np.lib.format.open_memmap(self.path, mode="w+", dtype=np_dtype, shape=(self.n, dim))
            t = torch.from_numpy(mm)
            self.emb = t.view(torch.bfloat16) if dtype == "bf16" else t
            self._mm = mm
        self.age = torch.full((self.n,), -1, dtype=torch.long)
        self.target_encodes = 0
        self._tokens = None  # (key, flat ids, offsets), built on first use for a given target tower

    # ---- token ids ------------------------------------------------------------------------
    def token_ids(self, rows, model) -> list[list[int]]:
        """The target tower's token ids of ``rows`` (tokenised once, then read from the table)."""
        key = (id(model.target_tower), model.target_max_length)
        if self._tokens is None or self._tokens[0] != key:
            flat, lens = [], []
            for s in range(0, self.n, 65536):
                ids = model.target_token_ids([self.inputs[i] for i in range(s, min(self.n, s + 65536))])
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

    # ---- reading --------------------------------------------------------------------------
    def embeddings(self, rows=None) -> torch.Tensor:
        """float32 copy of the cached embeddings of ``rows`` (all if None)."""
        e = self.emb if rows is None else self.emb[torch.as_tensor(rows, dtype=torch.long)]
        return e.float()

    def staleness(self, rows, fresh: torch.Tensor) -> float:
        """Mean over rows of ||cached - fresh||^2 / ||fresh||^2 (before writing fresh back)."""
        stale = self.embeddings(rows)
        fresh = fresh.detach().float().cpu()
        return float(((stale - fresh).pow(2).sum(1) / fresh.pow(2).sum(1).clamp(min=1e-12)).mean())

    def oldest(self, count: int, among=None) -> torch.Tensor:
        """Rows with the smallest age (never-encoded first), ties by row: deterministic."""
        rows = torch.arange(self.n) if among is None else torch.as_tensor(among, dtype=torch.long)
        key = self.age[rows] * (self.n + 1) + rows  # age first, then row
        return rows[key.argsort()[:count]]

    # ---- writing --------------------------------------------------------------------------
    def write(self, rows, emb: torch.Tensor, step: int) -> None:
        rows = torch.as_tensor(rows, dtype=torch.long)
        self.emb[rows] = emb.detach().to("cpu", DTYPES[self.dtype])
        self.age[rows] = step

    @torch.no_grad()
    def encode(self, rows, model, step: int, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
        """Re-encode ``rows`` with the current target tower (no gradient); returns float32 embeddings."""
        rows = torch.as_tensor(list(rows) if not torch.is_tensor(rows) else rows, dtype=torch.long)
        if len(rows) == 0:
            return torch.zeros(0, self.dim)
        out = self.embed(rows, model, batch_size, progress)
        self.write(rows, out, step)
        self.target_encodes += len(rows)
        return out

    @torch.no_grad()
    def embed(self, rows, model, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
        """Fresh float32 embeddings of ``rows`` with the current tower; the store is not changed."""
        rows = torch.as_tensor(list(rows) if not torch.is_tensor(rows) else rows, dtype=torch.long)
        out = torch.empty(len(rows), self.dim)
        for s in range(0, len(rows), 65536):
            r = rows[s:s + 65536]
            out[s:s + 65536] = model.encode_target_ids(self.token_ids(r, model), batch_size=batch_size,
                                                       progress=progress)
        return out

    # ---- checkpoint -----------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        e = self.emb.view(torch.int16) if self.dtype == "bf16" else self.emb
        return {"store.emb": e.contiguous().clone(), "store.age": self.age.clone()}

    def load_state_tensors(self, t: dict[str, torch.Tensor], target_encodes: int) -> None:
        e = t["store.emb"]
        self.emb[:] = e.view(torch.bfloat16) if self.dtype == "bf16" else e
        self.age[:] = t["store.age"]
        self.target_encodes = target_encodes
