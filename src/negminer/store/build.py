"""The store a configuration asks for: where its rows live (memory, a memory-mapped file, the GPU), in which
dtype, and which of them this process holds (``--store-shard`` under torchrun)."""

from __future__ import annotations

from pathlib import Path

import torch

from negminer.errors import ConfigError
from negminer.store.store import TargetStore

BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


def build_store(cfg, target_ids, target_inputs, dim: int, dist, device: torch.device, run_dir: Path,
                resume: bool = False) -> TargetStore:
    """``device``: where the model trains (the store goes there with --store-device auto if it fits in half
    the free memory, else stays on the CPU and feeds the GPU through pinned memory)."""
    n = len(target_ids)
    shard = dist if cfg.store_shard and dist.on else None  # this process holds 1/W of the rows
    nbytes = -(-n // (shard.world if shard else 1)) * dim * BYTES[cfg.store_dtype]
    path = cfg.store_path or None
    if path is None and cfg.store_max_ram_mb and nbytes > cfg.store_max_ram_mb * 2**20:
        path = str(Path(run_dir) / "store.npy")
    if path is not None and dist.on:  # each rank keeps its own copy (or its shard)
        path = str(Path(path).with_suffix(f".rank{dist.rank}.npy"))
    where = torch.device("cpu")
    if path is None:
        if cfg.store_device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise ConfigError("--store-device cuda asked for, but torch sees no CUDA device")
            where = torch.device(cfg.store_device)
        elif cfg.store_device == "auto" and device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            where = device if nbytes < 0.5 * free else torch.device("cpu")
    store = TargetStore(target_ids, target_inputs, dim, dtype=cfg.store_dtype, path=path, device=where,
                        reopen=resume, shard=shard)
    if store.device.type == "cpu" and device.type == "cuda":
        store.feed_device = device  # score on the GPU, chunks staged through pinned memory
    return store
