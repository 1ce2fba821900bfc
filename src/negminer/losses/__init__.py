"""Losses: how scores become a scalar. One loss per file, each with its paper and formula; each
declares the draw fields it needs (``needs``) and whether draws must be with replacement."""

import inspect

from negminer.losses.cache_surrogate import CacheSurrogateLoss
from negminer.losses.decoupled import DecoupledSoftmaxLoss
from negminer.losses.softmax import SoftmaxLoss
from negminer.losses.topk import SoftTopKLoss, soft_topk
from negminer.losses.triplet import TripletLoss

LOSSES = {"softmax": SoftmaxLoss, "cache-surrogate": CacheSurrogateLoss, "decoupled": DecoupledSoftmaxLoss,
          "topk": SoftTopKLoss, "triplet": TripletLoss}


def loss_options(name: str) -> list[str]:
    """The keyword options ``build_loss(name, ...)`` takes: ``<name>_<parameter>`` for each parameter
    of the loss's ``__init__`` (name with '-' as '_'), e.g. topk_k, topk_alpha, triplet_margin."""
    prefix = name.replace("-", "_")
    return [f"{prefix}_{p}" for p in _init_params(LOSSES[name])]


def _init_params(cls) -> list[str]:
    sig = inspect.signature(cls.__init__)
    return [p.name for p in list(sig.parameters.values())[1:]
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def build_loss(name: str, **options):
    """The loss ``name`` with its defaults, overridden by the options meant for it: ``<name>_<param>``
    (as ``loss_options(name)`` lists; the trainer can pass every loss's options, each loss takes its
    own) or the bare parameter name. Options that are None, or that the loss does not take, are
    ignored."""
    from negminer.errors import ConfigError

    if name not in LOSSES:
        raise ConfigError(f"unknown --loss {name!r}; choose from {', '.join(sorted(LOSSES))}")
    cls, prefix = LOSSES[name], name.replace("-", "_") + "_"
    kwargs = {}
    for p in _init_params(cls):
        for key in (prefix + p, p):
            if options.get(key) is not None:
                kwargs[p] = options[key]
                break
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--loss {name}: {e}") from None


__all__ = ["SoftmaxLoss", "CacheSurrogateLoss", "DecoupledSoftmaxLoss", "SoftTopKLoss", "TripletLoss", "soft_topk",
           "build_loss", "loss_options", "LOSSES"]
