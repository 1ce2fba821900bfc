"""Training configuration: defaults < config file (YAML or TOML) < command-line flags.

A leaf (no torch, no other part): ``TrainConfig`` holds every option, ``LIMITS`` each option's range or
choices, and ``check_options`` checks each option alone. Which parts combine is ``negminer.rules``'s job.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from negminer.errors import ConfigError


@dataclass
class TrainConfig:
    data: str = field(default="builtin:pycode", metadata={"help": "dataset folder or file (BEIR, MS MARCO, JSONL "
                      "pairs, parquet / CSV / save_to_disk with sentence-transformers' columns, XMC), hf:NAME[:CONFIG] "
                      "(the local Hugging Face cache), builtin:NAME or synthetic:N"})
    out: str = "runs/default"
    encoder: str = field(default="minilm", metadata={"help": "minilm | static | static:PATH | hf:PATH | PATH"})
    shared: bool = field(default=True, metadata={"help": "one tower for queries and targets"})
    pooling: str = field(default="mean", metadata={"help": "mean | cls"})
    normalize: bool = field(default=True, metadata={"help": "L2-normalise embeddings"})
    temperature: float = field(default=0.05, metadata={"help": "softmax temperature tau (score / tau)"})
    learn_temperature: bool = field(default=False, metadata={"help": "learn tau (log-parametrised)"})
    negatives: str = field(default="inbatch", metadata={"help": "negative sampler"})
    negative_grad: str = field(default="target", metadata={"help": "drawn negatives: target (re-encoded with "
                               "gradient) | none (the store's cached embeddings: no target-tower work, gradient to "
                               "the query tower only, as in XBM / MoCo)"})
    share_negatives: bool = field(default=False, metadata={"help": "every query also scores the other queries' "
                                  "drawn negatives (B x k for the encoding cost of k), mixture-corrected"})
    mined_file: str = field(default="", metadata={"help": "mined: JSONL of negatives per query (negminer mine; "
                            "default: the data's own negative lists)"})
    loss: str = field(default="softmax", metadata={"help": "softmax | cache-surrogate | decoupled (DEXML: other "
                      "positives leave the denominator) | topk (DEXML soft top-k) | triplet (NGAME margin loss)"})
    topk_k: int = field(default=5, metadata={"help": "topk loss: the k of the soft top-k"})
    topk_alpha: float = field(default=1.0, metadata={"help": "topk loss: sharpness of the soft top-k (on scores / tau)"})
    triplet_margin: float = field(default=0.3, metadata={"help": "triplet loss: margin on raw scores (cosines)"})
    triplet_hardest: int = field(default=5, metadata={"help": "triplet loss: hardest negatives per query"})
    batching: str = field(default="random", metadata={"help": "random | ngame (batches of whole clusters of similar "
                          "queries: hard in-batch negatives)"})
    ngame_cluster_size: int = field(default=16, metadata={"help": "ngame: queries per cluster (at most; >= half)"})
    ngame_warmup: int = field(default=0, metadata={"help": "ngame: epochs of random batches before the first "
                              "clustering (0: cluster the initial model's embeddings)"})
    ngame_recluster_every: int = field(default=1, metadata={"help": "ngame: epochs between clusterings"})
    ngame_curriculum: str = field(default="", metadata={"help": "ngame: epochs at which the cluster size doubles, "
                                  "starting from 1, e.g. 1,2,3 (empty: the full size at once)"})
    ngame_embeddings: str = field(default="recorded", metadata={"help": "ngame: recorded (the training forward's "
                                  "query embeddings) | encode (re-encode every training query)"})
    memory: str = field(default="plain", metadata={"help": "plain | gradcache (the batch encoded in chunks without "
                        "a graph, the loss's embedding gradients cached, each chunk re-encoded and backpropagated: the "
                        "full-batch gradient in the memory of one chunk) | accumulation (--accumulation micro-batches, "
                        "each with its own in-batch negatives, gradients summed) | contaccum (accumulation with a dual "
                        "memory bank of past query and target embeddings as extra negatives and anchors)"})
    accumulation: int = field(default=1, metadata={"help": "micro-batches per optimiser step (--memory accumulation, "
                              "contaccum); each has --batch-size / --accumulation queries"})
    bank_size: int = field(default=0, metadata={"help": "contaccum: query/positive pairs kept in the bank, FIFO across "
                           "optimiser steps (0: the global batch, processes x --batch-size)"})
    bank: str = field(default="dual", metadata={"help": "contaccum: dual (past queries are anchors too) | passage (past "
                      "targets as negatives only)"})
    bank_warmup: int = field(default=0, metadata={"help": "contaccum: optimiser steps before the bank joins the loss "
                             "(it fills from the start)"})
    chunk_size: int = field(default=0, metadata={"help": "rows per chunk: --negatives all targets (0: --eval-batch-size), "
                            "--memory gradcache (0: 32)"})
    num_negatives: int = field(default=8, metadata={"help": "negatives drawn per query by the sampler"})
    replacement: bool = field(default=False, metadata={"help": "draw negatives with replacement (the cache surrogate always does)"})
    inbatch: bool = field(default=True, metadata={"help": "also use the other queries' positives as negatives"})
    sample_temperature: float = field(default=0.0, metadata={"help": "sampling temperature (0: the loss temperature)"})
    margin: float = field(default=None, metadata={"type": float, "help": "drop candidates scoring above positive - margin"})
    relative_margin: float = field(default=None, metadata={"type": float, "help": "drop candidates scoring above "
                                   "positive - |positive| x R (sentence-transformers' relative_margin, NV-Retriever's "
                                   "positive-aware filter)"})
    max_score: float = field(default=None, metadata={"type": float, "help": "drop candidates scoring above this "
                             "(raw score, a cosine for normalised towers; sentence-transformers' max_score)"})
    refresh: str = field(default="auto", metadata={"help": "refreshers after each step, comma-separated: write-back, "
                         "fraction, full, nystrom, corrector, none; auto: the sampler's (cache, tree: write-back, + fraction with "
                         "--refresh-fraction; cache-stream: write-back; exact, ance: full)"})
    refresh_every: int = field(default=0, metadata={"help": "full refresh: re-encode all targets every R steps (0: 1 for exact, 100 otherwise)"})
    nystrom_landmarks: int = field(default=0, metadata={"help": "nystrom: landmarks re-encoded per update (0: 2 x the embedding size)"})
    nystrom_every: int = field(default=50, metadata={"help": "nystrom: steps between updates"})
    nystrom_ridge: float = field(default=1e-3, metadata={"help": "nystrom: smallest ridge towards the identity (relative); r, 10r, ..., 10^6 r are tried on held-out landmarks"})
    corrector: bool = field(default=False, metadata={"help": "corrector network (Monath et al., ICML 2024): a small "
                            "MLP trained online moves stale cached embeddings towards the current tower's"})
    corrector_apply: str = field(default="all", metadata={"help": "corrector: all (every row rewritten every T "
                                 "steps) | scored (only the rows a sampler scores, on the fly)"})
    corrector_every: int = field(default=10, metadata={"help": "corrector (apply all): steps between rewrites"})
    corrector_width: int = field(default=0, metadata={"help": "corrector: hidden width (0: 2 x the embedding size)"})
    corrector_depth: int = field(default=2, metadata={"help": "corrector: layers of the residual MLP"})
    corrector_lr: float = field(default=1e-3, metadata={"help": "corrector: Adam learning rate"})
    corrector_warmup: int = field(default=20, metadata={"help": "corrector: steps before its outputs are used"})
    corrector_age: bool = field(default=True, metadata={"help": "corrector: the row's age is an input"})
    selection: str = field(default="sample", metadata={"help": "exact: sample | topk"})
    ance_top: int = field(default=100, metadata={"help": "ance: draw among the index's top K"})
    cache_size: int = field(default=0, metadata={"help": "cache: targets cached (0: all); cache-stream: queue length"})
    refresh_fraction: float = field(default=0.0, metadata={"help": "fraction refresh: share of the sampler's rows re-encoded per step"})
    refresh_order: str = field(default="oldest", metadata={"help": "fraction refresh: oldest | random"})
    prefilter_top: int = field(default=0, metadata={"help": "cache: sample among each query's top K from an IVF index (0: all)"})
    prefilter_nprobe: int = field(default=8, metadata={"help": "cache prefilter: lists probed per query"})
    prefilter_nlist: int = field(default=0, metadata={"help": "cache prefilter: IVF lists (0: sqrt(M))"})
    prefilter_rebuild: int = field(default=100, metadata={"help": "cache prefilter: rebuild the index every N steps"})
    tree_beam: int = field(default=8, metadata={"help": "tree: leaves of largest bound scored up front per query (sets the first acceptance rate, not the distribution)"})
    tree_branching: int = field(default=16, metadata={"help": "tree: children per node"})
    tree_leaf_size: int = field(default=64, metadata={"help": "tree: rows per leaf at build"})
    tree_mode: str = field(default="exact", metadata={"help": "tree: exact (adaptive rejection, exact softmax draws; an "
                           "exact pass when the bounds are loose) | proposal (a leaf by its centroid mass, a row in it "
                           "exactly, weighted by its exact probability: never a full pass) | descend (the "
                           "same over the --tree-beam leaves a beam search down the tree finds, plus a uniform tail: "
                           "no product with every leaf)"})
    stream_policy: str = field(default="fifo", metadata={"help": "cache-stream: fifo | lru"})
    store_dtype: str = field(default="fp32", metadata={"help": "cached embeddings: fp32 | fp16 | bf16"})
    store_path: str = field(default="", metadata={"help": "memory-map the cached embeddings to this .npy file"})
    store_device: str = field(default="auto", metadata={"help": "auto (where the model trains, if it fits) | cpu | cuda"})
    store_shard: bool = field(default=False, metadata={"help": "under torchrun, each process holds 1/W of the cached "
                              "embeddings instead of all (--negatives cache or exact; refreshers write-back, fraction, "
                              "full, nystrom)"})
    store_max_ram_mb: float = field(default=0.0, metadata={"help": "memory-map the store to RUN_DIR/store.npy when larger (0: no limit)"})
    write_back: str = field(default="eval", metadata={"help": "drawn targets and positives into the store: eval (eval-mode "
                            "embeddings; free without dropout, else re-encoded) | train (the training forward's, free) | none"})
    dedupe_text: bool = field(default=True, metadata={"help": "mask targets whose text equals a positive's"})
    diagnose_every: int = field(default=0, metadata={"help": "log sampler diagnostics every N steps"})
    steps: int = field(default=0, metadata={"help": "optimizer steps (0: use --epochs)"})
    time_budget: float = field(default=0.0, metadata={"help": "stop training after this many seconds of training "
                               "(evaluation not counted; resume counts the time spent); 0: no limit"})
    schedule: str = field(default="linear", metadata={"help": "learning rate after warm-up: linear (decay to 0 at "
                          "the last step) | constant (for --time-budget runs)"})
    epochs: float = field(default=1.0, metadata={"help": "epochs over the training queries when --steps is 0"})
    batch_size: int = 32
    lr: float = field(default=None, metadata={"type": float, "help": "learning rate (default: 2e-5 for transformer "
                      "towers, 0.01 for --encoder static)"})
    weight_decay: float = 0.01
    warmup: float = field(default=0.1, metadata={"help": "warm-up: a fraction of the steps if < 1, else steps"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0: off)"})
    dist_timeout: float = field(default=300.0, metadata={"help": "torchrun: seconds a collective may wait for "
                                "the other ranks before the run stops with an error (a rank died)"})
    on_nan: str = field(default="stop", metadata={"help": "a non-finite or exploding loss or gradient (see "
                        "--divergence-factor): stop (exit 3, last checkpoint kept) | skip the step"})
    divergence_factor: float = field(default=100.0, metadata={"help": "stop (or skip, per --on-nan) a step whose "
                                     "gradient norm is this many times the largest of the last 50 steps', or whose loss "
                                     "is this many times (and 10 above) their median (from step 10 on); stop when a step scales the weights' norm by "
                                     "more than this factor (0: non-finite values only)"})
    max_skipped: float = field(default=0.1, metadata={"help": "--on-nan skip: stop (exit 3) once more than this "
                               "fraction of the steps so far were skipped (from 5 skipped steps on)"})
    seed: int = 42
    query_max_length: int = field(default=32, metadata={"help": "query tower max tokens"})
    target_max_length: int = field(default=128, metadata={"help": "target tower max tokens"})
    train_split: str = "train"
    eval_split: str = field(default="test", metadata={"help": "split of the zero-shot and final metrics (none: "
                            "no evaluation)"})
    dev_split: str = field(default="auto", metadata={"help": "split evaluated during training (--eval-every, "
                           "--eval-every-seconds) to select the model; auto: the data's dev / validation split, else "
                           "a held-out slice of the training queries (--dev-size), not trained on"})
    dev_size: float = field(default=0.1, metadata={"help": "held-out dev slice: a fraction of the training queries "
                            "(at most 1,000) if < 1, else a count"})
    select_metric: str = field(default="auto", metadata={"help": "dev metric that picks model/ (auto: ndcg@10; "
                               "xmc_p@1 for multi-label data; none: evaluate on dev only, model/ is the last)"})
    patience: int = field(default=0, metadata={"help": "stop after this many dev evaluations without improvement "
                          "(0: never)"})
    eval_every: int = field(default=0, metadata={"help": "evaluate every N steps (0: only at the end)"})
    eval_every_seconds: float = field(default=0.0, metadata={"help": "evaluate every S seconds of training (0: off)"})
    save_every: int = field(default=0, metadata={"help": "also checkpoint every N steps (0: by time only)"})
    save_every_seconds: float = field(default=600.0, metadata={"help": "checkpoint every S seconds of wall time "
                                      "(0: off); SIGINT / SIGTERM also checkpoint before exiting"})
    log_every: int = 1
    eval_batch_size: int = 128
    zero_shot: bool = field(default=True, metadata={"help": "evaluate the initial model first"})
    bf16: bool = field(default=False, metadata={"help": "bf16 autocast for the towers' forward"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    report_to: str = field(default="none", metadata={"help": "also log to: tensorboard, wandb, mlflow (comma-"
                           "separated, as Hugging Face's Trainer) | none; the JSONL logs are always written"})
    quiet: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def loss_options(self) -> dict:
        """Every loss's options (build_loss gives each loss its own)."""
        return {"topk_k": self.topk_k, "topk_alpha": self.topk_alpha, "triplet_margin": self.triplet_margin,
                "triplet_hardest": self.triplet_hardest}

    def refresh_period(self) -> int:
        return self.refresh_every or (1 if self.negatives == "exact" else 100)

    def total_steps(self, batches_per_epoch: int) -> int:
        if self.steps > 0:
            return self.steps
        return max(1, int(round(self.epochs * batches_per_epoch)))


# Each option's range (ge / gt / le: bounds; finite floats unless ``inf`` is allowed) or choices. Options
# naming parts (negatives, loss, refresh) are checked against the parts themselves (rules.py).
LIMITS: dict[str, dict] = {
    "pooling": {"choices": ("mean", "cls")},
    "temperature": {"gt": 0}, "negative_grad": {"choices": ("target", "none")},
    "topk_k": {"ge": 1}, "topk_alpha": {"gt": 0}, "triplet_margin": {}, "triplet_hardest": {"ge": 1},
    "batching": {"choices": ("random", "ngame")}, "ngame_cluster_size": {"ge": 1}, "ngame_warmup": {"ge": 0},
    "ngame_recluster_every": {"ge": 1}, "ngame_embeddings": {"choices": ("recorded", "encode")},
    "memory": {"choices": ("plain", "gradcache", "accumulation", "contaccum")}, "accumulation": {"ge": 1},
    "bank_size": {"ge": 0}, "bank": {"choices": ("dual", "passage")}, "bank_warmup": {"ge": 0}, "chunk_size": {"ge": 0},
    "num_negatives": {"ge": 0}, "sample_temperature": {"ge": 0}, "margin": {},
    "relative_margin": {"ge": 0, "le": 1}, "max_score": {}, "refresh_every": {"ge": 0},
    "nystrom_landmarks": {"ge": 0}, "nystrom_every": {"ge": 1}, "nystrom_ridge": {"ge": 0},
    "corrector_apply": {"choices": ("all", "scored")}, "corrector_every": {"ge": 1}, "corrector_width": {"ge": 0},
    "corrector_depth": {"ge": 1}, "corrector_lr": {"gt": 0}, "corrector_warmup": {"ge": 0},
    "selection": {"choices": ("sample", "topk")}, "ance_top": {"ge": 1}, "cache_size": {"ge": 0},
    "refresh_fraction": {"ge": 0, "le": 1}, "refresh_order": {"choices": ("oldest", "random")},
    "prefilter_top": {"ge": 0}, "prefilter_nprobe": {"ge": 1}, "prefilter_nlist": {"ge": 0}, "prefilter_rebuild": {"ge": 1},
    "tree_beam": {"ge": 0}, "tree_branching": {"ge": 2}, "tree_leaf_size": {"ge": 1},
    "tree_mode": {"choices": ("exact", "proposal", "descend")},
    "stream_policy": {"choices": ("fifo", "lru")}, "store_dtype": {"choices": ("fp32", "fp16", "bf16")},
    "store_device": {"choices": ("auto", "cpu", "cuda"), "prefix": "cuda:"}, "store_max_ram_mb": {"ge": 0},
    "write_back": {"choices": ("eval", "train", "none")}, "diagnose_every": {"ge": 0},
    "steps": {"ge": 0}, "time_budget": {"ge": 0}, "schedule": {"choices": ("linear", "constant")}, "epochs": {"gt": 0},
    "batch_size": {"ge": 2}, "lr": {"gt": 0}, "weight_decay": {"ge": 0}, "warmup": {"ge": 0}, "max_grad_norm": {"ge": 0},
    "dist_timeout": {"gt": 0}, "on_nan": {"choices": ("stop", "skip")},
    "divergence_factor": {"ge": 0}, "max_skipped": {"ge": 0, "le": 1}, "dev_size": {"gt": 0}, "patience": {"ge": 0},
    "save_every_seconds": {"ge": 0}, "seed": {"ge": 0, "le": 2**63 - 1},
    "query_max_length": {"ge": 1}, "target_max_length": {"ge": 1}, "eval_every": {"ge": 0},
    "eval_every_seconds": {"ge": 0}, "save_every": {"ge": 0}, "log_every": {"ge": 1}, "eval_batch_size": {"ge": 1},
    "device": {"choices": ("auto", "cpu", "cuda"), "prefix": "cuda:"},
}


def describe_limit(name: str) -> str:
    """'>= 0', 'in (0, 1]', 'one of a | b', ... for help texts and messages."""
    lim = LIMITS.get(name, {})
    if "choices" in lim:
        return "one of " + " | ".join(lim["choices"]) + (f" | {lim['prefix']}N" if "prefix" in lim else "")
    lo = f">= {lim['ge']}" if "ge" in lim else f"> {lim['gt']}" if "gt" in lim else ""
    hi = f"<= {lim['le']}" if "le" in lim else ""
    return " and ".join(x for x in (lo, hi) if x) or "a finite number"


def check_options(cfg: TrainConfig) -> None:
    """Each option alone: its type, that a number is finite and in its range, that a choice is one of its
    choices, and the few options with a syntax of their own. Raises ConfigError naming the option."""
    for f in fields(TrainConfig):
        v, lim = getattr(cfg, f.name), LIMITS.get(f.name)
        if v is None and f.default is None:
            continue
        typ = f.metadata.get("type", type(f.default))
        if typ is bool:
            ok = isinstance(v, bool)
        elif typ is int:
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif typ is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        else:
            ok = isinstance(v, typ)
        if not ok:
            raise ConfigError(f"option {f.name}: expected {typ.__name__}, got {v!r}")
        if lim is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        if "choices" in lim:
            if v not in lim["choices"] and not ("prefix" in lim and str(v).startswith(lim["prefix"])):
                raise ConfigError(f"{flag} {v!r}: must be {describe_limit(f.name)}")
            continue
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{flag} {v}: must be a finite number ({describe_limit(f.name)})")
        if ("ge" in lim and v < lim["ge"]) or ("gt" in lim and v <= lim["gt"]) or ("le" in lim and v > lim["le"]):
            raise ConfigError(f"{flag} {v}: must be {describe_limit(f.name)}")
    if cfg.warmup >= 1 and not float(cfg.warmup).is_integer():
        raise ConfigError(f"--warmup {cfg.warmup}: a fraction in [0, 1) or a whole number of steps")
    try:
        [int(e) for e in str(cfg.ngame_curriculum).replace(" ", "").split(",") if e]
    except ValueError:
        raise ConfigError(f"--ngame-curriculum: comma-separated epochs, got {cfg.ngame_curriculum!r}") from None


_FIELDS = {f.name: f for f in fields(TrainConfig)}


def read_config_file(path: str | os.PathLike) -> dict:
    """Read a YAML (.yaml/.yml) or TOML (.toml) file of TrainConfig options ('-' or '_' in keys)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            raw = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml", ".json"):
            import yaml

            raw = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"{p}: config must be .yaml, .yml, .toml or .json")
    except ConfigError:
        raise
    except Exception as e:  # parse errors of either format, on one line
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
        why = getattr(e, "problem", None) or " ".join(str(e).split())
        raise ConfigError(f"{where}: cannot parse config: {why}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: config must be a mapping of option: value")
    return {_key(p, k): v for k, v in raw.items()}


def _key(path, k) -> str:
    name = str(k).replace("-", "_")
    if name not in _FIELDS:
        raise ConfigError(f"{path}: unknown option {k!r}")
    return name


def resolve(overrides: dict, base: dict | None = None) -> TrainConfig:
    """Build a TrainConfig from a base mapping (config file) and overrides (flags), with type checks."""
    merged = dict(base or {})
    merged.update({k: v for k, v in overrides.items() if v is not None})
    out = {}
    for k, v in merged.items():
        f = _FIELDS[k]
        typ = f.metadata.get("type", type(f.default))
        if v is None and f.default is None:
            out[k] = None
            continue
        try:
            if typ is bool and not isinstance(v, bool):
                if str(v).lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(v)
                v = str(v).lower() in ("true", "1", "yes")
            elif typ in (int, float, str):
                if typ is int and isinstance(v, float) and not v.is_integer():
                    raise ValueError(v)
                v = typ(v)
        except (TypeError, ValueError):
            raise ConfigError(f"option {k}: expected {typ.__name__}, got {v!r}") from None
        out[k] = v
    if out.get("lr") is None:
        out["lr"] = default_lr(out.get("encoder", TrainConfig.encoder))
    cfg = TrainConfig(**out)
    check_options(cfg)
    return cfg


def default_lr(encoder: str) -> float:
    """Per tower: a static tower trained from scratch needs a far larger step than a pretrained transformer."""
    enc = str(encoder)
    return 0.01 if enc == "static" or enc.startswith("static:") else 2e-5


def save_config(cfg: TrainConfig, run_dir: Path) -> None:
    import yaml

    from negminer.fileio import atomic_write_text

    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    atomic_write_text(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2))
