"""Samplers: which negatives for these queries, with which log-probability.

Interface: ``sample(q [B, d] detached, batch) -> (ids [B, k] | None, log_q [B, k] | None)``.
A sampler never encodes with gradient; the trainer encodes the drawn ids (counted in one place).
"""

from negminer.samplers.inbatch import InBatchSampler, inbatch_mask

SAMPLERS = {"inbatch": InBatchSampler}


def build_sampler(name: str, **kwargs):
    from negminer.errors import ConfigError

    if name not in SAMPLERS:
        raise ConfigError(f"unknown --negatives {name!r}; choose from {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name](**kwargs)


__all__ = ["InBatchSampler", "inbatch_mask", "build_sampler", "SAMPLERS"]
