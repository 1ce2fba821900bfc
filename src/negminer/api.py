"""The Python API, for notebooks and programs: ``train``, ``evaluate`` and ``mine``, validated exactly as the
command line is (the CLI calls these), refusing to overwrite a run as it does.

    import negminer

    run = negminer.train(data="builtin:pycode", out="runs/nb", encoder="static", steps=50, quiet=True)
    run.metrics["ndcg@10"], run.out                       # metrics.json as a dict, the run folder
    negminer.evaluate(run.out / "model", "builtin:pycode")  # the same metrics, from the saved model
    negminer.mine(run.out / "model", "builtin:pycode", "runs/nb/negatives.jsonl", top_k=5)

Option names are the CLI's with underscores (``num_negatives=8``, ``eval_every=100``); ``config=`` takes a
TrainConfig, a dict or a YAML/TOML file, and keyword options override it. Errors are ``NegminerError``s
(``ConfigError``, ``DataError``, ...) with the CLI's one-line messages.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from negminer.config import TrainConfig, read_config_file, resolve
from negminer.errors import ConfigError

_NAMES = {f.name for f in fields(TrainConfig)}


@dataclass
class RunResult:
    """What ``train`` returns: ``metrics`` (the dict of RUN/metrics.json), ``out`` (the run folder), ``config``."""

    metrics: dict
    out: Path
    config: TrainConfig


def make_config(options: dict, config=None, resume: bool = False, max_length: int | None = None,
                notes: list | None = None) -> TrainConfig:
    """defaults < the run's saved config (``resume``) < ``config`` (file, dict or TrainConfig) < ``options``;
    checked option by option and by the rule table (rules.check), as the CLI does; the table's notes (options
    no part reads) are appended to ``notes``."""
    from negminer import rules

    bad = sorted(set(options) - _NAMES)
    if bad:
        raise ConfigError(f"unknown option {bad[0]!r} (options are the CLI's with underscores: num_negatives, ...)")
    flags = {k: v for k, v in options.items() if v is not None}
    if max_length is not None:
        flags.setdefault("query_max_length", max_length)
        flags.setdefault("target_max_length", max_length)
    base: dict = {}
    if resume and flags.get("out") and os.path.exists(os.path.join(flags["out"], "config.yaml")):
        base = read_config_file(os.path.join(flags["out"], "config.yaml"))
    if isinstance(config, TrainConfig):
        base.update(config.to_dict())
    elif isinstance(config, dict):
        base.update(config)
    elif config is not None:
        base.update(read_config_file(config))
    cfg = resolve(flags, base)
    if "steps" in flags and "epochs" in flags:
        raise ConfigError("--steps and --epochs: give one (--steps N counts optimiser steps, --epochs E passes "
                          "over the training queries)")
    found = rules.check(cfg).notes
    if notes is not None:
        notes.extend(found)
    from negminer.report import parse_report_to

    parse_report_to(cfg.report_to)  # --dry-run and the API refuse an unknown backend too
    return cfg


def run(cfg: TrainConfig, resume: bool = False, hooks=None) -> dict:
    """Train ``cfg`` (joining torchrun's other processes when launched by it); the metrics dict."""
    from negminer import dist
    from negminer.hooks import default_hooks
    from negminer.train.checkpoint import find_checkpoint
    from negminer.train.trainer import Trainer

    if not resume and find_checkpoint(cfg.out) is not None:  # checkpoint/, or checkpoint.prev alone
        raise ConfigError(f"{cfg.out} already holds a run; pass --resume to continue it or choose another --out")
    dist.init_from_env(cfg.dist_timeout, cfg.device)  # under torchrun: join the other ranks
    try:
        with dist.guard(cfg.out):  # a lost or silent rank: one line (dist.RankFailed), not the backend's traceback
            return Trainer(cfg, hooks=default_hooks(cfg) + list(hooks or [])).run(resume=resume)
    finally:
        dist.shutdown()


def train(config=None, *, resume: bool = False, hooks=None, **options) -> RunResult:
    """Run a training in this process; see the module docstring."""
    cfg = make_config(options, config, resume=resume)
    return RunResult(run(cfg, resume=resume, hooks=hooks), Path(cfg.out), cfg)


def evaluate(model, data, split: str = "test", out=None, backend: str = "exact", batch_size: int = 128,
             quiet: bool = True, propensity: str | None = None) -> dict:
    """Metrics of a saved model (RUN/model, RUN/checkpoint, RUN) or an encoder spec on ``data``'s ``split``."""
    from negminer.eval.evaluate import evaluate_saved

    return dict(evaluate_saved(str(model), str(data), split=split, out=out, backend=backend, batch_size=batch_size,
                               quiet=quiet, propensity=propensity))


def mine(model, data, out, split: str = "train", top_k: int = 10, margin: float | None = None, skip: int = 0,
         fmt: str = "flag", quiet: bool = True, **filters) -> Path:
    """Write hard negatives for ``data``'s ``split`` to ``out`` (JSONL, as ``negminer mine``); returns ``out``."""
    from negminer.mine import mine_command

    mine_command(str(model), str(data), str(out), split=split, top_k=top_k, margin=margin, skip=skip, fmt=fmt,
                 quiet=quiet, **filters)
    return Path(out)
