"""Which splits a training run needs, checked before any work (``Trainer`` and ``negminer data check``).

A run needs: the training split (``--train-split``) with queries that have a positive; the evaluation split
(``--eval-split``, test by default; ``none`` skips the zero-shot and final evaluations); and, when it
evaluates during training (``--eval-every``, ``--eval-every-seconds``), a dev split: the data's own
(``dev``, ``validation``, ``val``, ``valid``) unless ``--dev-split`` names one, else a held-out slice of the
training queries (``--dev-size``) that is then not trained on. Test is never used for model selection
unless ``--dev-split test`` asks for it.
"""

from __future__ import annotations

from negminer.errors import MissingSplit

DEV_NAMES = ("dev", "validation", "val", "valid")
HELD_OUT = "heldout"  # the name of the split carved out of train


def graded(ds, split: str) -> tuple[int, int]:
    """(queries judged, queries with a positive grade) of ``split``."""
    judged = ds.qrels.get(split, {})
    return len(judged), sum(any(g > 0 for g in j.values()) for j in judged.values())


def dev_split(ds, name: str, train_split: str) -> str:
    """The dev split's name: ``name`` if given (must exist), else the data's own, else HELD_OUT."""
    if name and name != "auto":
        return name
    return next((s for s in DEV_NAMES if s in ds.qrels and s != train_split and graded(ds, s)[1]), HELD_OUT)


def requirements(ds, train_split: str = "train", eval_split: str = "test", selects: bool = False,
                 dev: str = "auto") -> list[tuple[str, str, str | None]]:
    """(what, split, problem or None) for each split the run needs; ``selects``: it evaluates during training."""
    has = ", ".join(ds.qrels) or "none"
    out = []
    n, pos = graded(ds, train_split)
    problem = (f"missing (the data has: {has}); name one with --train-split" if train_split not in ds.qrels
               else f"none of its {n} queries has a positive grade" if not pos else None)
    out.append(("training (--train-split)", train_split, problem))
    if eval_split != "none":
        n, pos = graded(ds, eval_split)
        problem = (f"missing (the data has: {has}); name one with --eval-split, or --eval-split none to train "
                   "without the zero-shot and final evaluations" if eval_split not in ds.qrels
                   else f"none of its {n} judged queries has a grade above 0: every metric would be 0"
                   if not pos else None)
        out.append(("final metrics (--eval-split)", eval_split, problem))
    if selects:
        d = dev_split(ds, dev, train_split)
        if d == HELD_OUT:
            out.append(("model selection (--dev-split)", f"{HELD_OUT} (a slice of {train_split}, --dev-size)", None))
        else:
            n, pos = graded(ds, d)
            problem = (f"missing (the data has: {has})" if d not in ds.qrels
                       else f"none of its {n} judged queries has a grade above 0" if not pos else None)
            out.append(("model selection (--dev-split)", d, problem))
    return out


def check_splits(ds, cfg) -> list[str]:
    """Raise MissingSplit for a missing split; return warnings (a split without positive grades for evaluation)."""
    warnings = []
    for what, split, problem in requirements(ds, cfg.train_split, cfg.eval_split, selects=evaluates_during(cfg),
                                             dev=cfg.dev_split):
        if problem is None:
            continue
        if "missing" in problem or what.startswith("training"):
            raise MissingSplit(f"dataset {ds.name!r}: split {split!r} for {what}: {problem}")
        warnings.append(f"dataset {ds.name!r}: split {split!r} for {what}: {problem}")
    return warnings


def evaluates_during(cfg) -> bool:
    return bool(cfg.eval_every or cfg.eval_every_seconds)


def hold_out(ds, train_split: str, size: float, seed: int):
    """A copy of ``ds`` in which a seeded slice of the training queries with positives moved to split HELD_OUT.

    ``size`` < 1: a fraction (at most 1,000 queries); else a count. The training split loses those queries."""
    import copy

    import numpy as np

    train = ds.qrels[train_split]
    with_pos = sorted(q for q, j in train.items() if any(g > 0 for g in j.values()))
    n = int(size) if size >= 1 else min(1000, max(1, int(round(size * len(with_pos)))))
    if n >= len(with_pos):
        raise MissingSplit(f"--dev-size {size:g}: the dataset {ds.name!r} has {len(with_pos)} training queries; hold "
                           "out fewer (a fraction below 1, or a smaller count) or pass --dev-split NAME")
    if n < 1:
        raise MissingSplit(f"dataset {ds.name!r}: {len(with_pos)} training queries: too few to hold some out for "
                           "model selection; pass --dev-split NAME or evaluate at the end only")
    pick = np.random.default_rng([seed, 71]).choice(len(with_pos), n, replace=False)
    chosen = {with_pos[i] for i in pick}
    out = copy.copy(ds)
    out.qrels = {**ds.qrels, train_split: {q: j for q, j in train.items() if q not in chosen},
                 HELD_OUT: {q: train[q] for q in sorted(chosen)}}
    return out
