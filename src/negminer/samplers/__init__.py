"""Samplers: which negatives for these queries, with which log-probability.

Interface (see base.py): ``sample(q [B, d] detached, batch, store) -> Draw(ids [B, k], log_q, mask)``;
``update(...)`` after the step writes fresh embeddings back and refreshes. A sampler never encodes
with gradient; the trainer encodes the drawn ids (counted in one place). In-batch negatives are
added by the trainer unless ``--no-inbatch``.
"""

from negminer.samplers.ance import AnceSampler
from negminer.samplers.base import Batch, Draw, Sampler
from negminer.samplers.cache import CacheSampler
from negminer.samplers.cache_stream import CacheStreamSampler
from negminer.samplers.exact import ExactSampler
from negminer.samplers.gumbel import gumbel_topk
from negminer.samplers.inbatch import InBatchSampler, inbatch_mask
from negminer.samplers.uniform import UniformSampler

SAMPLERS = {"inbatch": InBatchSampler, "uniform": UniformSampler, "exact": ExactSampler, "ance": AnceSampler,
            "cache": CacheSampler, "cache-stream": CacheStreamSampler}


def build_sampler(cfg) -> Sampler:
    """The sampler named by ``cfg.negatives`` with its options from the TrainConfig."""
    from negminer.errors import ConfigError

    name = cfg.negatives
    if name not in SAMPLERS:
        raise ConfigError(f"unknown --negatives {name!r}; choose from {', '.join(sorted(SAMPLERS))}")
    common = {"margin": cfg.margin, "sample_temperature": cfg.sample_temperature or None}
    k = cfg.num_negatives
    if name == "inbatch":
        return InBatchSampler()
    if name == "uniform":
        return UniformSampler(k, **common)
    if name == "exact":
        return ExactSampler(k, refresh_every=cfg.refresh_period(), selection=cfg.selection,
                            replacement=cfg.loss == "cache-surrogate", **common)
    if name == "ance":
        return AnceSampler(k, refresh_every=cfg.refresh_period(), top=cfg.ance_top, **common)
    if name == "cache":
        return CacheSampler(k, cache_size=cfg.cache_size, refresh_fraction=cfg.refresh_fraction,
                            refresh_order=cfg.refresh_order, seed=cfg.seed, prefilter_top=cfg.prefilter_top,
                            prefilter_nprobe=cfg.prefilter_nprobe, prefilter_nlist=cfg.prefilter_nlist,
                            prefilter_rebuild=cfg.prefilter_rebuild,
                            replacement=cfg.loss == "cache-surrogate", **common)
    return CacheStreamSampler(k, cache_size=cfg.cache_size or 4096, policy=cfg.stream_policy,
                              replacement=cfg.loss == "cache-surrogate", **common)


__all__ = ["SAMPLERS", "Batch", "Draw", "Sampler", "build_sampler", "gumbel_topk", "inbatch_mask",
           "InBatchSampler", "UniformSampler", "ExactSampler", "AnceSampler", "CacheSampler", "CacheStreamSampler"]
