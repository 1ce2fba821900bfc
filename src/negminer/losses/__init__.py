"""Losses: how scores become a scalar. One loss per file, each with its paper and formula."""

from negminer.losses.softmax import SoftmaxLoss

LOSSES = {"softmax": SoftmaxLoss}


def build_loss(name: str):
    from negminer.errors import ConfigError

    if name not in LOSSES:
        raise ConfigError(f"unknown --loss {name!r}; choose from {', '.join(sorted(LOSSES))}")
    return LOSSES[name]()


__all__ = ["SoftmaxLoss", "build_loss", "LOSSES"]
