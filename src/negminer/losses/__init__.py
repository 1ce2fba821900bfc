"""Losses: how scores become a scalar. One loss per file, each with its paper and formula; each
declares the draw fields it needs (``needs``) and whether draws must be with replacement."""

from negminer.losses.cache_surrogate import CacheSurrogateLoss
from negminer.losses.inputs import loss_inputs
from negminer.losses.softmax import SoftmaxLoss

LOSSES = {"softmax": SoftmaxLoss, "cache-surrogate": CacheSurrogateLoss}


def build_loss(name: str):
    from negminer.errors import ConfigError

    if name not in LOSSES:
        raise ConfigError(f"unknown --loss {name!r}; choose from {', '.join(sorted(LOSSES))}")
    return LOSSES[name]()


__all__ = ["SoftmaxLoss", "CacheSurrogateLoss", "build_loss", "loss_inputs", "LOSSES"]
