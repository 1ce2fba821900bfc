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

def sampler_class(name: str) -> type[Sampler]:
    """The class the rule table names for ``--negatives name`` (rules.PARTS: ``impl``)."""
    import importlib

    from negminer import rules
    from negminer.errors import ConfigError

    part = rules.PARTS.get(("sampler", name))
    if part is None:
        raise ConfigError(f"unknown --negatives {name!r}; choose from {', '.join(rules.NAMES['sampler'])}")
    module, cls = part.impl.split(":")
    return getattr(importlib.import_module(module), cls)


def build_sampler(cfg, replacement: bool = False, mined: list | None = None) -> Sampler:
    """The sampler named by ``cfg.negatives`` with its options from the TrainConfig (each sampler's
    ``from_config``); ``replacement``: draw with replacement (``--replacement``, or a loss that needs it);
    ``mined``: per training query, its mined negative rows (``--negatives mined``)."""
    common = {"margin": cfg.margin, "relative_margin": cfg.relative_margin, "max_score": cfg.max_score,
              "sample_temperature": cfg.sample_temperature or None,
              "replacement": replacement or cfg.replacement}
    cls = sampler_class(cfg.negatives)
    s = cls.from_config(cfg, common, mined) if cfg.negatives == "mined" else cls.from_config(cfg, common)
    s.shared = cfg.share_negatives
    return s


__all__ = ["Batch", "Draw", "Exclusions", "Sampler", "build_sampler", "sampler_class", "gumbel_topk",
           "InBatchSampler", "UniformSampler", "ExactSampler", "AnceSampler", "CacheSampler", "CacheStreamSampler", "MinedSampler",
           "TreeSampler", "AllSampler"]
