"""Command line: ``negminer train | eval | audit | mine | diagnose | compare | data check``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import MISSING, fields

from negminer import __version__, rules
from negminer.config import LIMITS, TrainConfig, describe_limit
from negminer.errors import ConfigError, NegminerError


GROUPS = {  # option groups of --help: the parts' own options come from the rule table
    "data and run folder": ("data", "out", "train_split", "seed", "device", "quiet", "dedupe_text"),
    "encoder (the towers)": ("encoder", "shared", "pooling", "normalize", "temperature", "learn_temperature",
                             "query_max_length", "target_max_length", "bf16"),
    "negatives (sampler)": ("negatives",), "loss": ("loss",), "batching": ("batching",),
    "memory strategy": ("memory",), "refreshers": ("refresh",), "target store": rules.STORE_OPTS,
    "optimisation": ("steps", "epochs", "time_budget", "batch_size", "lr", "weight_decay", "warmup", "schedule",
                     "max_grad_norm"),
    "evaluation and model selection": ("eval_split", "eval_every", "eval_every_seconds", "dev_split", "dev_size",
                                       "select_metric", "patience", "zero_shot", "eval_batch_size", "diagnose_every"),
    "checkpoints, logs and safety": ("save_every", "save_every_seconds", "log_every", "on_nan", "divergence_factor",
                                     "max_skipped", "dist_timeout"),
}
KIND_GROUP = {"sampler": "negatives (sampler)", "loss": "loss", "batcher": "batching", "memory": "memory strategy",
              "refresher": "refreshers"}


def _group_of() -> dict:
    out = {}
    for (kind, _), part in rules.PARTS.items():
        for o in part.options:
            out.setdefault(o, KIND_GROUP[kind])
    for g, names in GROUPS.items():
        out.update(dict.fromkeys(names, g))
    return out


def _add_train_args(p: argparse.ArgumentParser) -> None:
    groups = {g: p.add_argument_group(g) for g in GROUPS}
    other = p.add_argument_group("other")
    where = _group_of()
    run = groups["data and run folder"]
    run.add_argument("--config", help="YAML or TOML file of options; flags override it")
    run.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint (or checkpoint.prev "
                     "when the newest is unreadable)")
    groups["encoder (the towers)"].add_argument("--max-length", type=int, help="max tokens for both towers")
    choices = {"negatives": "sampler", "loss": "loss"}
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        lim = describe_limit(f.name) if f.name in LIMITS else ""
        if f.name in choices:
            lim = "one of " + " | ".join(rules.NAMES[choices[f.name]])
        text = f.metadata.get("help", "")
        if lim.startswith("one of") and " | " in text:
            lim = ""  # the help names the choices
        help_ = "; ".join(x for x in (text, lim) if x) + (
            f" (default: {default})" if default is not None and "default" not in text else "")
        g = groups.get(where.get(f.name), other)
        if isinstance(default, bool):
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            g.add_argument(flag, type=f.metadata.get("type", type(default)), default=None, help=help_,
                           metavar=f.name.upper() if f.name not in ("data", "out") else "PATH")


def train_config(args) -> TrainConfig:
    """The TrainConfig of ``train``-style arguments (defaults < --config file < flags), checked by the rule
    table as the Python API checks it (api.make_config): a bad option or combination stops here, before any work."""
    from negminer.api import make_config

    flags = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    notes: list = []
    cfg = make_config(flags, args.config, resume=getattr(args, "resume", False), max_length=args.max_length,
                      notes=notes)
    if not cfg.quiet and not getattr(args, "dry_run", False):
        for note in notes:
            print(f"negminer: note: {note}", file=sys.stderr)
    return cfg


def cmd_train(args, hooks=None) -> int:
    cfg = train_config(args)
    if args.dry_run:
        print(rules.describe(cfg))
        return 0
    from negminer.api import run
    from negminer.train.finish import format_comparison

    metrics = run(cfg, resume=args.resume, hooks=hooks)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun rank 0 reports (the group is gone by now)
        print(format_comparison(metrics))
        print(f"run directory: {cfg.out}")
    return 0


def cmd_eval(args) -> int:
    from negminer.eval.evaluate import eval_command

    return eval_command(args.model, args.data, split=args.split, out=args.out, backend=args.backend,
                        batch_size=args.batch_size, quiet=args.quiet, propensity=args.propensity)


def cmd_data_check(args) -> int:
    from negminer.data.check import dataset_stats, format_stats
    from negminer.data.load import load_dataset

    ds = load_dataset(args.path)
    stats = dataset_stats(ds)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0


def cmd_mine(args) -> int:
    from negminer.mine import mine_command

    return mine_command(args.model, args.data, args.out, split=args.split, top_k=args.top_k, margin=args.margin,
                        skip=args.skip, fmt=args.format, quiet=args.quiet, relative_margin=args.relative_margin,
                        max_score=args.max_score)


def cmd_diagnose(args) -> int:
    from negminer.diagnostics import diagnose_command

    return diagnose_command(args)


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (not the usage block): ``negminer: error: ...``, exit 2."""

    def error(self, message):
        self.exit(2, f"negminer: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="negminer", description="Dual-encoder training with fresh hard negatives.")
    p.add_argument("--version", action="version", version=f"negminer {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a dual encoder")
    _add_train_args(t)
    t.add_argument("--dry-run", action="store_true", help="print the resolved pipeline (batcher, memory, sampler, "
                   "refreshers, loss, corrections) and exit without training or writing a run")
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("eval", help="evaluate a saved model (exact or FAISS top-100)")
    e.add_argument("--model", required=True, help="model directory (RUN_DIR/model)")
    e.add_argument("--data", required=True, help="dataset folder or file (BEIR, MS MARCO, JSONL, parquet, CSV, save_to_disk, XMC), hf:NAME[:CONFIG], builtin:NAME or synthetic:N")
    e.add_argument("--split", default="test")
    e.add_argument("--out", help="write run.trec and metrics.json here")
    e.add_argument("--backend", default="exact", choices=["exact", "faiss"])
    e.add_argument("--batch-size", type=int, default=128)
    e.add_argument("--quiet", action="store_true")
    e.add_argument("--propensity", metavar="A,B", help="inverse-propensity A,B for PSP@k on multi-label data "
                   "(default: the Extreme Classification Repository's value for the dataset name, else 0.55,1.5)")
    e.set_defaults(func=cmd_eval)
    mi = sub.add_parser("mine", help="export hard negatives as JSONL (FlagEmbedding / sentence-transformers)")
    mi.add_argument("--model", required=True, help="model directory or encoder spec (minilm, static, PATH)")
    mi.add_argument("--data", required=True)
    mi.add_argument("--out", required=True, help="JSONL file to write (parquet if it ends with .parquet)")
    mi.add_argument("--split", default="train")
    mi.add_argument("--top-k", type=int, default=10, help="negatives per query")
    mi.add_argument("--margin", type=float, default=None, help="drop candidates scoring above positive - margin")
    mi.add_argument("--relative-margin", type=float, default=None, metavar="R", help="drop candidates scoring above "
                    "positive - |positive| x R (sentence-transformers' relative_margin; 0..1)")
    mi.add_argument("--max-score", type=float, default=None, metavar="S", help="drop candidates scoring above S "
                    "(sentence-transformers' max_score)")
    mi.add_argument("--skip", type=int, default=0, help="skip the first N ranks (likely false negatives)")
    mi.add_argument("--format", default="flag", choices=["flag", "triplet", "n-tuple", "n-tuple-scores", "labeled-pair",
                    "labeled-list", "st"], help="flag (FlagEmbedding) or sentence-transformers' mine_hard_negatives "
                    "output_format (st = n-tuple); default: flag")
    mi.add_argument("--quiet", action="store_true")
    mi.set_defaults(func=cmd_mine)
    dg = sub.add_parser("diagnose", help="compare a sampler's negatives with the exact softmax")
    _add_train_args(dg)
    dg.add_argument("--model", default=None, help="model directory (default: --encoder)")
    dg.add_argument("--batches", type=int, default=4, help="batches of queries to average over (default: 4)")
    dg.set_defaults(func=cmd_diagnose)
    au = sub.add_parser("audit", help="is the loss an unbiased estimate of the full softmax for this configuration? "
                        "(the pipeline built as train builds it, against brute force; one JSON object)")
    _add_train_args(au)
    au.add_argument("--draws", type=int, default=50, help="repetitions of a step's randomness around the anchors (default: 50)")
    au.add_argument("--anchors", type=int, default=8, help="training queries whose estimates are checked (default: 8)")
    au.add_argument("--at-step", type=int, default=0, help="train this many steps first (a stale store; default: 0)")
    au.set_defaults(func=cmd_audit)
    cp = sub.add_parser("compare", help="paired test of runs on the same queries (per-query metrics)")
    cp.add_argument("runs", nargs="+", help="RUN_DIR (or per_query.jsonl); seeds of one setup joined by commas; "
                    "the first is the baseline")
    cp.add_argument("--metric", action="append", help="metric(s) to compare (default: all)")
    cp.add_argument("--json", action="store_true", help="print the rows as JSON")
    cp.set_defaults(func=cmd_compare)
    d = sub.add_parser("data", help="dataset tools")
    dsub = d.add_subparsers(dest="data_command", required=True)
    c = dsub.add_parser("check", help="validate a dataset and print its statistics")
    c.add_argument("path", help="dataset folder or file (BEIR, MS MARCO, JSONL, parquet, CSV, save_to_disk, XMC), hf:NAME[:CONFIG], builtin:NAME or synthetic:N")
    c.add_argument("--json", action="store_true", help="print the statistics as JSON")
    c.set_defaults(func=cmd_data_check)
    return p


def cmd_audit(args) -> int:
    from negminer.audit import audit_command

    for name in ("draws", "anchors"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be at least 1")
    if args.at_step < 0:
        raise ConfigError("--at-step must be >= 0")
    return audit_command(args)


def cmd_compare(args) -> int:
    from negminer.eval.compare import METRICS, compare, format_rows

    bad = [m for m in args.metric or [] if m not in METRICS]
    if bad:
        raise ConfigError(f"unknown --metric {bad[0]!r}; choose from {', '.join(METRICS)}")
    rows = compare(args.runs, tuple(args.metric or METRICS))
    print(json.dumps(rows, indent=2) if args.json else format_rows(rows))
    return 0


def main(argv: list[str] | None = None, hooks=None) -> int:
    """The command line; ``hooks``: extra training hooks (objects with ``on_step`` and the other events of
    negminer/hooks.py), for programs that drive the CLI (fault injection in tests, custom logging).
    Under torchrun, a rank whose collective failed (dist.RankFailed) prints its line and ends the process
    (``os._exit``) instead of returning."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, hooks=hooks) if args.func is cmd_train else args.func(args)
    except NegminerError as e:
        print(f"negminer: error: {e}", file=sys.stderr, flush=True)
        d = sys.modules.get("negminer.dist")  # loaded by every run that could have a process group
        lost = d is not None and isinstance(e, d.RankFailed)
        if d is not None and os.environ.get("TORCHELASTIC_ERROR_FILE"):  # torchrun's failure report shows it too
            d.record_error(f"negminer: error: {e}", consequence=lost and not e.timeout)
        if lost:  # a torchrun worker whose process group broke: exit now, since tearing the group down at
            sys.stdout.flush()  # exit may wait on the lost peer
            os._exit(e.exit_code)
        return e.exit_code
    except KeyboardInterrupt:
        print("negminer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
