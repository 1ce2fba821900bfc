"""Memory strategies: how a large batch is made to fit (one step skeleton for all: pipeline/step.py).

| name | micro-batches | embeddings | adds |
|---|---|---|---|
| plain | 1 | with a graph | - |
| gradcache | 1 | cached leaves, chunks re-encoded in the backward | - |
| accumulation | k | with a graph | - |
| contaccum | k | with a graph | a bank of past embeddings (candidates and anchors) |
"""

from negminer.memory.accumulation import Accumulation
from negminer.memory.base import Memory
from negminer.memory.cached_targets import CachedEncoding, batch_norm_layers, encode_cached
from negminer.memory.contaccum import ContAccum, MemoryBank
from negminer.memory.gradcache import GradCache


def build_memory(cfg, global_batch: int) -> Memory:
    """The strategy ``--memory`` names; ContAccum's default bank is the global batch."""
    if cfg.memory == "gradcache":
        return GradCache()
    if cfg.memory == "accumulation":
        return Accumulation(cfg.accumulation)
    if cfg.memory == "contaccum":
        return ContAccum(cfg.accumulation, cfg.bank_size or global_batch, dual=cfg.bank == "dual",
                         warmup=cfg.bank_warmup)
    return Memory()


__all__ = ["Accumulation", "CachedEncoding", "ContAccum", "GradCache", "Memory", "MemoryBank", "batch_norm_layers",
           "build_memory", "encode_cached"]
