"""Refreshers: after each step, which store rows to re-encode and how to move the stale rest.

``--refresh`` names them, comma-separated (``auto``: the sampler's own, ``rules.auto_refreshers``); they
run in that order after every optimiser step, write-back first (which combine: rules.py). Any store-based sampler (cache,
prefiltered cache, tree, exact, ance) works with any of them; cache-stream's queue takes write-back only.

| name | re-encodes | moves | options |
|---|---|---|---|
| write-back | drawn rows and positives (free without dropout) | - | --write-back eval/train |
| fraction | ceil(f M) rows per step, oldest or random | - | --refresh-fraction, --refresh-order |
| full | all M rows every R steps | - | --refresh-every |
| nystrom | m landmarks every T steps | every other row by a fitted linear map | --nystrom-landmarks, --nystrom-every |
| corrector | - | every row every T steps (or the rows scored, on the fly) by an MLP trained on the encodes | --corrector, --corrector-apply, --corrector-every |
"""

from negminer.refreshers.base import Fresh, Refresher, relative_change
from negminer.refreshers.corrector import Corrector, CorrectorNet
from negminer.refreshers.fraction import Fraction
from negminer.refreshers.full import Full
from negminer.refreshers.nystrom import Nystrom, fit_map
from negminer.refreshers.write_back import WriteBack, first_occurrence
from negminer.rules import auto_refreshers, refresh_names

def build_refreshers(cfg, dim: int, dropout: bool = False) -> list[Refresher]:
    """The refreshers of ``cfg`` for a tower of output size ``dim`` (``dropout``: its training forward is noisy)."""
    out: list[Refresher] = []
    for n in refresh_names(cfg):  # the rule table's resolution (rules.py)
        if n == "write-back":
            out.append(WriteBack(cfg.write_back, dropout=dropout))
        elif n == "fraction":
            out.append(Fraction(cfg.refresh_fraction, cfg.refresh_order))
        elif n == "full":
            out.append(Full(cfg.refresh_period()))
        elif n == "corrector":
            out.append(Corrector(dim, cfg.corrector_apply, cfg.corrector_every, cfg.corrector_width, cfg.corrector_depth,
                                 cfg.corrector_lr, cfg.corrector_warmup, cfg.corrector_age, normalize=cfg.normalize,
                                 seed=cfg.seed))
        else:
            out.append(Nystrom(cfg.nystrom_landmarks or 2 * dim, cfg.nystrom_every, cfg.nystrom_ridge,
                               normalize=cfg.normalize))
    return out


__all__ = ["Corrector", "CorrectorNet", "Fresh", "Refresher", "WriteBack", "Fraction", "Full", "Nystrom", "auto_refreshers", "build_refreshers",
           "refresh_names", "fit_map", "first_occurrence", "relative_change"]
