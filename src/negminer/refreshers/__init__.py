"""Refreshers: after each step, which store rows to re-encode and how to move the stale rest.

``--refresh`` names them, comma-separated (``auto``: the sampler's own, see ``auto_names``); they
run in that order after every optimiser step, write-back first. Any store-based sampler (cache,
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

NAMES = ("write-back", "fraction", "full", "nystrom", "corrector")
STORE_SAMPLERS = ("cache", "cache-stream", "exact", "ance", "tree")


def auto_names(cfg) -> list[str]:
    """What each sampler refreshed before refreshers were parts of their own (and still does by default)."""
    if cfg.negatives in ("cache", "cache-stream", "tree"):
        out = [] if cfg.write_back == "none" else ["write-back"]
        return out + (["fraction"] if cfg.negatives != "cache-stream" and cfg.refresh_fraction > 0 else [])
    if cfg.negatives in ("exact", "ance"):
        return ["full"]
    return []


def refresh_names(cfg) -> list[str]:
    """The refreshers ``cfg.refresh`` asks for, write-back first, each once; raises ValueError with the reason."""
    asked = [n.strip() for n in str(cfg.refresh).split(",") if n.strip() and n.strip() != "none"]
    if getattr(cfg, "corrector", False) and "corrector" not in asked:
        asked.append("corrector")
    names: list[str] = []
    for n in asked:
        if n not in NAMES + ("auto",):
            raise ValueError(f"unknown refresher {n!r} in --refresh; choose from auto, {', '.join(NAMES)}")
        for m in auto_names(cfg) if n == "auto" else [n]:
            if m not in names:
                names.append(m)
    explicit = set(asked) - {"auto"}
    if explicit and cfg.negatives not in STORE_SAMPLERS:
        raise ValueError(f"--refresh {cfg.refresh}: --negatives {cfg.negatives} reads no store "
                         f"(store-based samplers: {', '.join(STORE_SAMPLERS)})")
    if cfg.negatives == "cache-stream" and set(names) - {"write-back"}:
        raise ValueError("--negatives cache-stream holds recently written rows only: its refresher is write-back")
    if "write-back" in explicit and cfg.write_back == "none":
        raise ValueError("--refresh write-back with --write-back none")
    if "fraction" in names and cfg.refresh_fraction <= 0:
        raise ValueError("--refresh fraction needs --refresh-fraction > 0")
    if "corrector" in names and cfg.corrector_apply == "scored":
        if cfg.negatives == "tree":
            raise ValueError("--corrector-apply scored: the tree's bounds hold for the stored rows; use --corrector-apply all")
        if cfg.negatives == "ance":
            raise ValueError("--corrector-apply scored: ance draws from an index snapshot, not from reads of the store; "
                             "use --corrector-apply all")
        if "nystrom" in names:
            raise ValueError("--corrector-apply scored with nystrom: the map would move corrected rows; use --corrector-apply all")
    return sorted(names, key=lambda n: (n != "write-back", n == "corrector"))  # write-back first, corrector last


def build_refreshers(cfg, dim: int, dropout: bool = False) -> list[Refresher]:
    """The refreshers of ``cfg`` for a tower of output size ``dim`` (``dropout``: its training forward is noisy)."""
    out: list[Refresher] = []
    for n in refresh_names(cfg):
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


__all__ = ["NAMES", "Corrector", "CorrectorNet", "Fresh", "Refresher", "WriteBack", "Fraction", "Full", "Nystrom", "auto_names", "build_refreshers",
           "refresh_names", "fit_map", "first_occurrence", "relative_change"]
