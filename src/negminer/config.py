"""Training configuration: defaults < config file (YAML or TOML) < command-line flags."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from negminer.errors import ConfigError


@dataclass
class TrainConfig:
    data: str = "builtin:pycode"
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
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup: float = field(default=0.1, metadata={"help": "warm-up: a fraction of the steps if < 1, else steps"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0: off)"})
    dist_timeout: float = field(default=1800.0, metadata={"help": "torchrun: seconds a collective may wait for "
                                "the other ranks before the run stops with an error (a rank died)"})
    on_nan: str = field(default="stop", metadata={"help": "a non-finite loss or gradient: stop (exit 3, last checkpoint kept) | skip the step"})
    seed: int = 42
    query_max_length: int = field(default=32, metadata={"help": "query tower max tokens"})
    target_max_length: int = field(default=128, metadata={"help": "target tower max tokens"})
    train_split: str = "train"
    eval_split: str = "test"
    eval_every: int = field(default=0, metadata={"help": "evaluate every N steps (0: only at the end)"})
    eval_every_seconds: float = field(default=0.0, metadata={"help": "evaluate every S seconds of training (0: off)"})
    save_every: int = field(default=0, metadata={"help": "checkpoint every N steps (0: only at the end)"})
    log_every: int = 1
    eval_batch_size: int = 128
    zero_shot: bool = field(default=True, metadata={"help": "evaluate the initial model first"})
    bf16: bool = field(default=False, metadata={"help": "bf16 autocast for the towers' forward"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
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
    except Exception as e:  # parse errors of either format
        raise ConfigError(f"{p}: cannot parse config: {e}") from None
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
    cfg = TrainConfig(**out)
    _validate(cfg)
    return cfg


def _validate(cfg: TrainConfig) -> None:
    checks = [
        (cfg.batch_size >= 2, "batch_size must be at least 2"),
        (cfg.lr > 0, "lr must be positive"),
        (cfg.temperature > 0, "temperature must be positive"),
        (cfg.steps >= 0 and cfg.epochs > 0, "steps must be >= 0 and epochs > 0"),
        (cfg.warmup >= 0 and (cfg.warmup < 1 or float(cfg.warmup).is_integer()),
         "warmup is a fraction in [0, 1) or a whole number of steps"),
        (cfg.time_budget >= 0 and cfg.eval_every_seconds >= 0, "time_budget and eval_every_seconds must be >= 0"),
        (cfg.schedule in ("linear", "constant"), "schedule must be linear or constant"),
        (cfg.negative_grad in ("target", "none"), "negative_grad must be target or none"),
        (cfg.negative_grad == "target" or cfg.negatives in ("cache", "cache-stream", "exact", "ance", "tree"),
         "--negative-grad none reads the drawn negatives from the store: it needs --negatives cache, cache-stream, "
         "exact, ance or tree"),
        (not cfg.share_negatives or cfg.loss == "softmax", "--share-negatives needs --loss softmax"),
        (not cfg.share_negatives or cfg.prefilter_top == 0,
         "--share-negatives cannot correct --prefilter-top draws (per-query candidate lists)"),
        (not cfg.share_negatives or cfg.negatives != "inbatch", "--share-negatives needs a sampler that draws negatives"),
        (not cfg.mined_file or cfg.negatives == "mined", "--mined-file needs --negatives mined"),
        (cfg.margin is None or cfg.negatives != "mined",
         "--margin needs scores: mined lists have none (pass --margin to negminer mine instead)"),
        (cfg.query_max_length > 0 and cfg.target_max_length > 0, "max lengths must be positive"),
        (cfg.pooling in ("mean", "cls"), "pooling must be mean or cls"),
        (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:"), "device: auto, cpu or cuda"),
        (cfg.num_negatives >= 0, "num_negatives must be >= 0"),
        (cfg.selection in ("sample", "topk"), "selection must be sample or topk"),
        (cfg.refresh_order in ("oldest", "random"), "refresh_order must be oldest or random"),
        (cfg.stream_policy in ("fifo", "lru"), "stream_policy must be fifo or lru"),
        (cfg.store_dtype in ("fp32", "fp16", "bf16"), "store_dtype must be fp32, fp16 or bf16"),
        (cfg.store_device in ("auto", "cpu", "cuda") or cfg.store_device.startswith("cuda:"), "store_device: auto, cpu or cuda"),
        (cfg.store_max_ram_mb >= 0, "store_max_ram_mb must be >= 0"),
        (cfg.write_back in ("eval", "train", "none"), "write_back must be eval, train or none"),
        (cfg.on_nan in ("stop", "skip"), "on_nan must be stop or skip"),
        (not (cfg.loss == "cache-surrogate" and cfg.selection == "topk"),
         "--loss cache-surrogate needs draws from the softmax; --selection topk gives none"),
        (not (cfg.negatives == "cache-stream" and cfg.write_back == "none"),
         "--negatives cache-stream keeps the positives' written-back embeddings; it cannot run with --write-back none"),
        (cfg.prefilter_top >= 0 and cfg.prefilter_nprobe > 0 and cfg.prefilter_nlist >= 0 and cfg.prefilter_rebuild > 0,
         "prefilter_top and prefilter_nlist must be >= 0, prefilter_nprobe and prefilter_rebuild > 0"),
        (cfg.prefilter_top == 0 or cfg.negatives == "cache", "--prefilter-top needs --negatives cache"),
        (0 <= cfg.refresh_fraction <= 1, "refresh_fraction is a fraction in [0, 1]"),
        (cfg.loss != "cache-surrogate" or cfg.negatives in ("cache", "cache-stream", "exact", "tree"),
         "--loss cache-surrogate needs --negatives cache, cache-stream, exact or tree"),
        (cfg.tree_beam >= 0 and cfg.tree_branching >= 2 and cfg.tree_leaf_size >= 1,
         "tree_beam must be >= 0, tree_leaf_size >= 1, tree_branching >= 2"),
        (cfg.negatives != "inbatch" or cfg.inbatch, "--no-inbatch needs a sampler that draws negatives"),
        (not cfg.store_shard or (cfg.negatives in ("cache", "exact") and cfg.prefilter_top == 0
                                 and not cfg.corrector and "corrector" not in cfg.refresh),
         "--store-shard works with --negatives cache or exact (no --prefilter-top) and without the corrector: "
         "the others read every row of the store on every process"),
    ]
    checks.append((cfg.batching in ("random", "ngame") and cfg.ngame_cluster_size >= 1 and cfg.ngame_warmup >= 0
                   and cfg.ngame_recluster_every >= 1 and cfg.ngame_embeddings in ("recorded", "encode"),
                   "batching is random or ngame; ngame_cluster_size, ngame_recluster_every >= 1, ngame_warmup >= 0, "
                   "ngame_embeddings recorded or encode"))
    try:
        [int(e) for e in str(cfg.ngame_curriculum).replace(" ", "").split(",") if e]
    except ValueError:
        checks.append((False, f"ngame_curriculum: comma-separated epochs, got {cfg.ngame_curriculum!r}"))
    checks.append((cfg.topk_k >= 1 and cfg.topk_alpha > 0 and cfg.triplet_hardest >= 1 and cfg.chunk_size >= 0,
                   "topk_k, triplet_hardest >= 1, topk_alpha > 0, chunk_size >= 0"))
    checks.append((cfg.dist_timeout > 0, "dist_timeout must be positive"))
    checks.append((cfg.memory in ("plain", "gradcache", "accumulation", "contaccum"),
                   "memory must be plain, gradcache, accumulation or contaccum"))
    checks.append((cfg.accumulation >= 1 and cfg.bank_size >= 0 and cfg.bank_warmup >= 0 and cfg.bank in ("dual", "passage"),
                   "accumulation >= 1, bank_size and bank_warmup >= 0, bank dual or passage"))
    checks.append((cfg.accumulation == 1 or cfg.memory in ("accumulation", "contaccum"),
                   "--accumulation needs --memory accumulation or contaccum"))
    checks.append((cfg.batch_size % cfg.accumulation == 0 and cfg.batch_size // cfg.accumulation >= 2,
                   f"--batch-size {cfg.batch_size} must split into --accumulation {cfg.accumulation} micro-batches of "
                   "at least 2 queries"))
    checks.append((cfg.memory != "contaccum" or (cfg.inbatch and cfg.loss in ("softmax", "decoupled", "topk", "triplet")
                                                 and not cfg.share_negatives),
                   "--memory contaccum extends the in-batch pool: it needs in-batch negatives, --loss softmax, decoupled, "
                   "topk or triplet, and no --share-negatives"))
    checks.append((cfg.memory != "contaccum" or cfg.negatives in ("inbatch", "mined", "ance")
                   or (cfg.negatives == "exact" and cfg.selection == "topk"),
                   "--memory contaccum: the bank holds past batches' targets, whose inclusion probabilities are unknown, "
                   "so it cannot be mixed with a corrected sampled softmax; use --negatives inbatch, mined, ance or "
                   "exact --selection topk (or --memory gradcache for a large exact batch)"))
    checks.append((cfg.memory == "plain" or cfg.negatives != "all",
                   "--negatives all already encodes its targets in chunks; use it with --memory plain"))
    checks.append((cfg.negatives != "all" or cfg.loss in ("softmax", "decoupled", "topk", "triplet"),
                   "--negatives all needs --loss softmax, decoupled, topk or triplet"))
    checks.append((cfg.loss not in ("decoupled", "topk", "triplet") or cfg.inbatch or cfg.negatives != "inbatch",
                   f"--loss {cfg.loss} needs negatives: in-batch or drawn"))
    checks.append((cfg.corrector_apply in ("all", "scored") and cfg.corrector_every >= 1 and cfg.corrector_depth >= 1
                   and cfg.corrector_width >= 0 and cfg.corrector_warmup >= 0 and cfg.corrector_lr > 0,
                   "corrector_apply is all or scored; corrector_every, corrector_depth >= 1; width, warmup >= 0"))
    checks.append((cfg.nystrom_landmarks >= 0 and cfg.nystrom_every >= 1 and cfg.nystrom_ridge >= 0,
                   "nystrom_landmarks and nystrom_ridge must be >= 0, nystrom_every >= 1"))
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    from negminer.refreshers import refresh_names

    try:
        refresh_names(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def save_config(cfg: TrainConfig, run_dir: Path) -> None:
    import yaml

    from negminer.fileio import atomic_write_text

    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    atomic_write_text(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2))
