"""Samplers: which negatives for these queries, with which inclusion probability.

Interface (see base.py): ``sample(q [B, d] detached, batch, store) -> Draw(ids [B, k], mask, log_pi,
pool_log_pi, log_z)``; ``setup`` fills what it reads once (through the trainer's ``encode``, so every
target encode is counted in one place); keeping the store fresh is the refreshers' job
(refreshers/). A sampler never encodes with gradient. In-batch negatives are added by the trainer unless ``--no-inbatch``.
"""

from negminer.samplers.all import AllSampler
from negminer.samplers.ance import AnceSampler
from negminer.samplers.base import Sampler
from negminer.samplers.cache import CacheSampler
from negminer.samplers.cache_stream import CacheStreamSampler
from negminer.samplers.exact import ExactSampler
from negminer.samplers.gumbel import gumbel_topk
from negminer.samplers.inbatch import InBatchSampler
from negminer.samplers.mined import MinedSampler
from negminer.samplers.tree import TreeSampler
from negminer.samplers.uniform import UniformSampler
from negminer.types import Batch, Draw, Exclusions

SAMPLERS = {"inbatch": InBatchSampler, "uniform": UniformSampler, "exact": ExactSampler, "ance": AnceSampler,
            "cache": CacheSampler, "cache-stream": CacheStreamSampler, "mined": MinedSampler, "tree": TreeSampler,
            "all": AllSampler}


def build_sampler(cfg, replacement: bool = False, mined: list | None = None) -> Sampler:
    """The sampler named by ``cfg.negatives`` with its options from the TrainConfig; ``replacement``:
    draw with replacement (``--replacement``, or a loss that needs it); ``mined``: per training query,
    its mined negative rows (``--negatives mined``)."""
    from negminer.errors import ConfigError

    name = cfg.negatives
    if name not in SAMPLERS:
        raise ConfigError(f"unknown --negatives {name!r}; choose from {', '.join(sorted(SAMPLERS))}")
    common = {"margin": cfg.margin, "sample_temperature": cfg.sample_temperature or None,
              "replacement": replacement or cfg.replacement}
    k = cfg.num_negatives
    if name == "inbatch":
        s = InBatchSampler()
    elif name == "all":
        s = AllSampler()
    elif name == "mined":
        s = MinedSampler(k, mined, **common)
    elif name == "uniform":
        s = UniformSampler(k, **common)
    elif name == "exact":
        s = ExactSampler(k, selection=cfg.selection, **common)
    elif name == "ance":
        s = AnceSampler(k, top=cfg.ance_top, **common)
    elif name == "cache":
        s = CacheSampler(k, cache_size=cfg.cache_size, seed=cfg.seed, prefilter_top=cfg.prefilter_top,
                         prefilter_nprobe=cfg.prefilter_nprobe, prefilter_nlist=cfg.prefilter_nlist,
                         prefilter_rebuild=cfg.prefilter_rebuild, **common)
    elif name == "tree":
        s = TreeSampler(k, beam=cfg.tree_beam, branching=cfg.tree_branching, leaf_size=cfg.tree_leaf_size,
                        seed=cfg.seed, **common)
    else:
        s = CacheStreamSampler(k, cache_size=cfg.cache_size or 4096, policy=cfg.stream_policy, **common)
    s.shared = cfg.share_negatives
    return s


__all__ = ["SAMPLERS", "Batch", "Draw", "Exclusions", "Sampler", "build_sampler", "gumbel_topk",
           "InBatchSampler", "UniformSampler", "ExactSampler", "AnceSampler", "CacheSampler", "CacheStreamSampler", "MinedSampler",
           "TreeSampler", "AllSampler"]
