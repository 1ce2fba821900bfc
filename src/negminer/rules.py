"""What each part is and what it combines with: one table, one check, no torch.

Every sampler, loss, batcher, memory strategy and refresher declares here (``PARTS``) the options it reads
(ranges and choices: ``config.LIMITS``), what it reads and produces (``gives``: capabilities such as
``store``, ``draws``, ``log_pi``, ``cross``) and what it needs from the others (``needs``: capabilities,
each with the reason). ``check(cfg)`` resolves the pipeline a configuration asks for and stops with the
first broken rule (ConfigError: the CLI exits 2 before any work); ``describe(cfg)`` is ``--dry-run``;
``legal_grid()`` enumerates the combinations the conformance suite runs. A new sampler is one file in
samplers/ and one entry here.

Capabilities (a part gives them, another needs them):

    store      reads cached target embeddings (the trainer keeps a store and refreshers for it)
    draws      proposes k negatives per query
    log_pi     says each draw's inclusion probability / expected count (a corrected estimate)
    cross      gives every query's pi of any row (shared negatives: one pool for the batch)
    scores     scores candidates, so a margin (--margin, --relative-margin, --max-score) can drop the ones
               above the positive
    softmax    draws from softmax(scores / tau_s) (the cache surrogate's proposal)
    log_z      gives log sum exp(stale scores) (the cache surrogate)
    shardable  works with a store split across processes (--store-shard)
    pool       (loss) scores an in-batch pool; shared (loss) scores one pool for the whole batch
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable

from negminer.config import LIMITS, TrainConfig, check_options, describe_limit
from negminer.errors import ConfigError

STORE = "store"


@dataclass(frozen=True)
class Part:
    kind: str                                  # sampler | loss | batcher | memory | refresher
    name: str
    summary: str
    options: tuple[str, ...] = ()              # TrainConfig fields only this part (or its kind) reads
    gives: frozenset = frozenset()             # capabilities
    needs: tuple[tuple[str, str], ...] = ()    # (capability the pipeline must have, reason)
    refuses: tuple[tuple[str, str], ...] = ()  # (capability the pipeline must not have, reason)
    adjust: Callable[[TrainConfig, set], None] | None = None  # options that change what it gives
    limits: str = ""                           # what ``adjust`` takes away, in words
    impl: str = ""                             # "module:Class" that implements it (samplers)
    correction: str = ""                       # the weights it makes (``--dry-run``)


def _caps(*names: str) -> frozenset:
    return frozenset(names)


def _exact_adjust(cfg, caps):
    if cfg.selection == "topk":
        caps -= {"log_pi", "cross", "softmax", "log_z"}


def _cache_adjust(cfg, caps):
    if cfg.prefilter_top:
        caps -= {"cross", "shardable"}  # per-query candidate lists; each process would need every row


def _tree_adjust(cfg, caps):
    if cfg.tree_mode in ("proposal", "descend"):
        caps -= {"softmax", "log_z"}  # draws from the tree's proposal, not the softmax


def _sampler(name: str, impl: str, *args, **kw) -> Part:
    return Part("sampler", name, *args, impl=f"negminer.samplers.{impl}", **kw)


STORE_OPTS = ("store_dtype", "store_path", "store_device", "store_shard", "store_max_ram_mb", "write_back")
FILTERS = ("margin", "relative_margin", "max_score")  # false-negative filters: they need "scores"
SCORED = ("num_negatives", "sample_temperature") + FILTERS + ("replacement", "negative_grad", "share_negatives")

SAMPLERS = [
    _sampler("inbatch", "inbatch:InBatchSampler", "the other queries' positives only", gives=_caps()),
    _sampler("uniform", "uniform:UniformSampler", "k uniform draws with replacement over every target (log Q = log k/N)",
             ("num_negatives", "share_negatives", "replacement"), _caps("draws", "log_pi", "cross"),
             correction="log pi = log(k / N)"),
    _sampler("exact", "exact:ExactSampler", "k draws from softmax(q . g(t) / tau_s) over every target, re-encoded every R steps "
             "(R = 1: the exact oracle) or the exact top-k (--selection topk)", SCORED + ("selection",) + STORE_OPTS,
             _caps(STORE, "draws", "log_pi", "cross", "scores", "softmax", "log_z", "shardable"), adjust=_exact_adjust,
             limits="--selection topk takes the exact top k: no softmax draws, no inclusion probabilities",
             correction="log pi = Gumbel-top-k inclusion probability (priority-sampling threshold), or log k q with "
                    "replacement"),
    _sampler("ance", "ance:AnceSampler", "k of each query's top --ance-top from an index rebuilt every R steps (ANCE)",
             ("num_negatives",) + FILTERS + ("negative_grad", "share_negatives", "ance_top") + STORE_OPTS,
             _caps(STORE, "draws", "scores")),
    _sampler("cache", "cache:CacheSampler", "k draws from softmax(stale scores / tau_s) over the cached targets (negative cache, "
             "Gumbel-Max in one streaming pass); --prefilter-top K: among each query's top K from an IVF index",
             SCORED + ("cache_size", "prefilter_top", "prefilter_nprobe", "prefilter_nlist", "prefilter_rebuild") + STORE_OPTS,
             _caps(STORE, "draws", "log_pi", "cross", "scores", "softmax", "log_z", "shardable"), adjust=_cache_adjust,
             limits="--prefilter-top gives each query its own candidate list: no inclusion probabilities for the "
                "other queries, and each process would need every row",
             correction="log pi = Gumbel-top-k inclusion probability over the cached rows, or log k q with replacement"),
    _sampler("cache-stream", "cache_stream:CacheStreamSampler", "k draws from softmax(stale scores / tau_s) over a FIFO / LRU queue of "
             "recent positives (the streaming negative cache)",
             SCORED + ("cache_size", "stream_policy") + STORE_OPTS,
             _caps(STORE, "draws", "log_pi", "cross", "scores", "softmax", "log_z"),
             correction="log pi over the queue's rows (-inf outside it: in-batch-only terms)"),
    _sampler("tree", "tree:TreeSampler", "exact draws from the softmax over every cached target by a dynamic k-means tree's "
             "bounds and adaptive rejection (with replacement); --tree-mode proposal: draws from the tree's "
             "proposal (leaf by centroid mass, row within it exactly); --tree-mode descend: the same over the "
             "leaves a beam search down the tree finds, plus a uniform tail",
             SCORED + ("tree_beam", "tree_branching", "tree_leaf_size", "tree_mode") + STORE_OPTS,
             _caps(STORE, "draws", "log_pi", "cross", "scores", "softmax", "log_z"), adjust=_tree_adjust,
             limits="--tree-mode proposal and descend draw from the tree's proposal, not the softmax: no loss that needs "
                "softmax draws (cache-surrogate)",
             correction="log pi = log k + s - log Z_hat (Z_hat: scored leaves exact, the rest estimated); "
                "proposal and descend modes: log pi = log k + log Q(leaf) + s - log M_leaf, exact"),
    _sampler("mined", "mined:MinedSampler", "k of each query's fixed mined list, uniformly (no proposal over all targets)",
             ("num_negatives", "mined_file", "share_negatives"), _caps("draws")),
    _sampler("all", "all:AllSampler", "every target is a negative (the exact full softmax, encoded in chunks with a cached "
             "gradient)", ("chunk_size",), _caps()),
]
LOSSES = [
    Part("loss", "softmax", "InfoNCE over [positive, negatives], each negative corrected by -log pi",
         gives=_caps("pool", "neg", "shareable")),
    Part("loss", "cache-surrogate", "Lindgren et al.'s surrogate: stopgrad(1 - p_pos) x mean of drawn scores - s_pos",
         needs=(("softmax", "it needs draws from the softmax over the store (--negatives cache, cache-stream, exact "
                 "or tree, --selection sample)"), ("log_z", "it needs the stale partition function from the pass"))),
    Part("loss", "decoupled", "DEXML's decoupled softmax: other positives leave each positive's denominator",
         gives=_caps("pool", "neg")),
    Part("loss", "topk", "DEXML's soft top-k", ("topk_k", "topk_alpha"), _caps("pool", "neg")),
    Part("loss", "triplet", "NGAME's margin loss on the hardest negatives", ("triplet_margin", "triplet_hardest"),
         _caps("pool", "neg")),
]
BATCHERS = [
    Part("batcher", "random", "a fresh permutation each epoch, drop-last"),
    Part("batcher", "ngame", "batches of whole clusters of similar queries (NGAME), re-clustered every epochs",
         ("ngame_cluster_size", "ngame_warmup", "ngame_recluster_every", "ngame_curriculum", "ngame_embeddings")),
]
MEMORY = [
    Part("memory", "plain", "the batch in one forward and backward"),
    Part("memory", "gradcache", "embeddings in chunks without a graph, the loss's gradient cached, chunks re-encoded "
         "and backpropagated (the exact large-batch gradient)", ("chunk_size",)),
    Part("memory", "accumulation", "--accumulation micro-batches, each with its own in-batch pool, gradients summed",
         ("accumulation",)),
    Part("memory", "contaccum", "accumulation with a dual memory bank of past query and target embeddings",
         ("accumulation", "bank_size", "bank", "bank_warmup"),
         needs=(("pool", "the bank extends the in-batch pool: it needs in-batch negatives and a loss with a pool"),),
         refuses=(("log_pi", "the bank holds past batches' targets, whose inclusion probabilities are unknown, so "
                   "it cannot be mixed with a corrected sampled softmax; use --negatives inbatch, mined, ance or "
                   "exact --selection topk (or --memory gradcache for a large exact batch)"),
                  ("shared", "--share-negatives builds a pool of its own"))),
]
REFRESHERS = [
    Part("refresher", "write-back", "the drawn rows and positives the step encoded go back into the store",
         ("write_back",), needs=((STORE, "it writes into the store"),)),
    Part("refresher", "fraction", "ceil(f M) of the sampler's rows re-encoded per step, oldest or random",
         ("refresh_fraction", "refresh_order"), needs=((STORE, "it re-encodes store rows"),)),
    Part("refresher", "full", "every row re-encoded every R steps", ("refresh_every",),
         needs=((STORE, "it re-encodes store rows"),)),
    Part("refresher", "nystrom", "m landmarks re-encoded every T steps; the rest of their cohort moved by a fitted "
         "linear map", ("nystrom_landmarks", "nystrom_every", "nystrom_ridge"), needs=((STORE, "it moves store rows"),)),
    Part("refresher", "corrector", "a small MLP trained online moves stale rows towards the current tower",
         ("corrector", "corrector_apply", "corrector_every", "corrector_width", "corrector_depth", "corrector_lr",
          "corrector_warmup", "corrector_age"), needs=((STORE, "it moves store rows"),)),
]
PARTS: dict[tuple[str, str], Part] = {(p.kind, p.name): p for p in SAMPLERS + LOSSES + BATCHERS + MEMORY + REFRESHERS}
NAMES = {kind: [p.name for p in PARTS.values() if p.kind == kind] for kind in ("sampler", "loss", "batcher", "memory",
                                                                             "refresher")}


@dataclass
class Pipeline:
    """The parts a configuration resolves to, and the capabilities they give together."""

    cfg: TrainConfig
    sampler: Part
    loss: Part
    batcher: Part
    memory: Part
    refreshers: list[Part] = field(default_factory=list)
    caps: set = field(default_factory=set)
    removed: set = field(default_factory=set)  # capabilities the sampler's options took away
    notes: list[str] = field(default_factory=list)  # options set that no part reads

    def parts(self) -> list[Part]:
        return [self.batcher, self.memory, self.sampler, *self.refreshers, self.loss]


def _part(kind: str, name: str, flag: str) -> Part:
    if (kind, name) not in PARTS:
        raise ConfigError(f"unknown {flag} {name!r}; choose from {', '.join(NAMES[kind])}")
    return PARTS[(kind, name)]


def auto_refreshers(cfg: TrainConfig) -> list[str]:
    """What ``--refresh auto`` means for each sampler."""
    if cfg.negatives in ("cache", "cache-stream", "tree"):
        out = [] if cfg.write_back == "none" else ["write-back"]
        return out + (["fraction"] if cfg.negatives != "cache-stream" and cfg.refresh_fraction > 0 else [])
    if cfg.negatives in ("exact", "ance"):
        return ["full"]
    return []


def refresh_names(cfg: TrainConfig) -> list[str]:
    """The refreshers ``cfg.refresh`` asks for, write-back first, corrector last, each once."""
    asked = [n.strip() for n in str(cfg.refresh).split(",") if n.strip() and n.strip() != "none"]
    if cfg.corrector and "corrector" not in asked:
        asked.append("corrector")
    names: list[str] = []
    for n in asked:
        if n != "auto" and ("refresher", n) not in PARTS:
            raise ConfigError(f"unknown refresher {n!r} in --refresh; choose from auto, {', '.join(NAMES['refresher'])}")
        for m in auto_refreshers(cfg) if n == "auto" else [n]:
            if m not in names:
                names.append(m)
    return sorted(names, key=lambda n: (n != "write-back", n == "corrector"))


def resolve(cfg: TrainConfig) -> Pipeline:
    sampler = _part("sampler", cfg.negatives, "--negatives")
    p = Pipeline(cfg, sampler, _part("loss", cfg.loss, "--loss"), _part("batcher", cfg.batching, "--batching"),
                 _part("memory", cfg.memory, "--memory"))
    p.refreshers = [PARTS[("refresher", n)] for n in refresh_names(cfg)]
    caps = set(sampler.gives)
    if sampler.adjust:
        sampler.adjust(cfg, caps)
    p.removed = set(sampler.gives) - caps
    if "draws" in caps and cfg.num_negatives == 0:
        caps -= {"draws", "log_pi", "cross"}
    caps |= set(p.loss.gives)
    if not cfg.inbatch:
        caps.discard("pool")
    if cfg.share_negatives:
        caps.add("shared")
    p.caps = caps
    return p


def check(cfg: TrainConfig) -> Pipeline:
    """Every option alone (config.check_options), then the parts together: the first broken rule raises
    ConfigError with the reason. Returns the resolved pipeline."""
    check_options(cfg)
    p = resolve(cfg)
    for part in p.parts():
        for cap, why in part.needs:
            if cap == STORE and not _uses_store(p):
                raise ConfigError(f"{_flag(part)}: {why}, and --negatives {p.sampler.name} reads no store (store-based "
                                  f"samplers: {', '.join(s.name for s in SAMPLERS if STORE in s.gives)})")
            if cap not in p.caps:
                raise ConfigError(f"{_flag(part)}: {why}" + (f"; {p.sampler.limits}" if cap in p.removed else ""))
        for cap, why in part.refuses:
            if cap in p.caps:
                raise ConfigError(f"{_flag(part)}: {why}")
    for ok, why in RULES:
        if not ok(p):
            raise ConfigError(why(p) if callable(why) else why)
    p.notes = unused_options(p)
    return p


def _flag(part: Part) -> str:
    flag = {"sampler": "--negatives", "loss": "--loss", "batcher": "--batching", "memory": "--memory",
            "refresher": "--refresh"}[part.kind]
    return f"{flag} {part.name}"


def _uses_store(p: Pipeline) -> bool:
    return STORE in p.caps and "draws" in p.caps


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _filter_set(cfg) -> str | None:
    """The flag of the first false-negative filter set (--margin, --relative-margin, --max-score), or None."""
    return next((f"--{o.replace('_', '-')}" for o in FILTERS if getattr(cfg, o) is not None), None)


def _micro(cfg) -> int:
    return cfg.batch_size // cfg.accumulation


# The combination rules that are not a plain capability: (holds, reason), checked in order.
RULES: list[tuple[Callable[[Pipeline], bool], object]] = [
    (lambda p: p.sampler.name != "inbatch" or p.cfg.inbatch, "--no-inbatch needs a sampler that draws negatives"),
    (lambda p: p.sampler.name != "inbatch" or not p.cfg.share_negatives,
     "--share-negatives needs a sampler that draws negatives"),
    (lambda p: "draws" in p.caps or p.cfg.inbatch or p.sampler.name == "all",
     lambda p: f"--loss {p.cfg.loss} needs negatives: in-batch or drawn (--num-negatives 0 with --no-inbatch)"),
    (lambda p: not p.cfg.share_negatives or "shareable" in p.loss.gives, "--share-negatives needs --loss softmax"),
    (lambda p: not p.cfg.share_negatives or "cross" in p.caps or "log_pi" not in p.caps,
     "--share-negatives cannot correct --prefilter-top draws (per-query candidate lists)"),
    (lambda p: _filter_set(p.cfg) is None or "scores" in p.caps,
     lambda p: f"{_filter_set(p.cfg)} needs a sampler that scores candidates (exact, ance, cache, cache-stream, tree); "
               f"--negatives {p.sampler.name} has no scores" + (f" (pass {_filter_set(p.cfg)} to negminer mine instead)"
                                                               if p.sampler.name == "mined" else "")),
    (lambda p: not p.cfg.replacement or "softmax" in p.caps or p.sampler.name == "uniform",
     lambda p: f"--replacement: --negatives {p.sampler.name} takes distinct negatives (no softmax draws to repeat)"),
    (lambda p: p.cfg.negative_grad == "target" or _uses_store(p),
     "--negative-grad none reads the drawn negatives from the store: it needs --negatives cache, cache-stream, "
     "exact, ance or tree"),
    (lambda p: p.cfg.prefilter_top == 0 or p.cfg.negatives == "cache", "--prefilter-top needs --negatives cache"),
    (lambda p: not (p.cfg.negatives == "cache-stream" and p.cfg.write_back == "none"),
     "--negatives cache-stream keeps the positives' written-back embeddings; it cannot run with --write-back none"),
    (lambda p: p.sampler.name != "cache-stream" or {r.name for r in p.refreshers} <= {"write-back"},
     "--negatives cache-stream holds recently written rows only: its refresher is write-back"),
    (lambda p: not ("write-back" in p.cfg.refresh.split(",") and p.cfg.write_back == "none"),
     "--refresh write-back with --write-back none"),
    (lambda p: "fraction" not in {r.name for r in p.refreshers} or p.cfg.refresh_fraction > 0,
     "--refresh fraction needs --refresh-fraction > 0"),
    (lambda p: not ("corrector" in {r.name for r in p.refreshers} and p.cfg.corrector_apply == "scored"
                    and p.sampler.name == "tree"),
     "--corrector-apply scored: the tree's bounds hold for the stored rows; use --corrector-apply all"),
    (lambda p: not ({"corrector", "nystrom"} <= {r.name for r in p.refreshers} and p.cfg.corrector_apply == "scored"),
     "--corrector-apply scored with nystrom: the map would move corrected rows; use --corrector-apply all"),
    (lambda p: not p.cfg.store_shard or ("shardable" in p.caps
                                         and all(r.name != "corrector" for r in p.refreshers)),
     "--store-shard works with --negatives cache or exact (no --prefilter-top) and without the corrector: the "
     "others read every row of the store on every process"),
    (lambda p: p.cfg.accumulation == 1 or p.cfg.memory in ("accumulation", "contaccum"),
     "--accumulation needs --memory accumulation or contaccum"),
    (lambda p: p.cfg.batch_size % p.cfg.accumulation == 0 and _micro(p.cfg) >= 2,
     lambda p: f"--batch-size {p.cfg.batch_size} must split into --accumulation {p.cfg.accumulation} micro-batches "
               "of at least 2 queries"),
    (lambda p: p.cfg.memory == "plain" or p.sampler.name != "all",
     "--negatives all already encodes its targets in chunks; use it with --memory plain"),
    (lambda p: p.sampler.name != "all" or "pool" in p.loss.gives,
     "--negatives all needs --loss softmax, decoupled, topk or triplet"),
    (lambda p: p.cfg.batching != "ngame" or _micro(p.cfg) % p.cfg.ngame_cluster_size == 0,
     lambda p: f"--ngame-cluster-size {p.cfg.ngame_cluster_size} must divide the "
               + (f"micro-batch (--batch-size {p.cfg.batch_size} / --accumulation {p.cfg.accumulation})"
                  if p.cfg.accumulation > 1 else f"batch (--batch-size {p.cfg.batch_size})")
               + ": batches hold whole clusters, so that the in-batch counts are exact"),
    (lambda p: p.cfg.batching != "ngame" or not p.cfg.ngame_curriculum or _pow2(p.cfg.ngame_cluster_size),
     "--ngame-curriculum doubles the cluster size up to --ngame-cluster-size: it must be a power of two"),
]


def unused_options(p: Pipeline) -> list[str]:
    """Options set away from their defaults that no part of this pipeline reads: notes, not errors (a sweep
    passes one set of flags to every method), printed by the CLI and ``--dry-run``."""
    cfg, out = p.cfg, []
    mine = {o for part in p.parts() for o in part.options}
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for o in dict.fromkeys(o for part in PARTS.values() for o in part.options):
        if o in mine or getattr(cfg, o) == defaults[o]:
            continue
        owners = sorted({_flag(q) for q in PARTS.values() if o in q.options})
        out.append(f"--{o.replace('_', '-')} is an option of {', '.join(owners)}: this run does not use it")
    return out


# ---- --dry-run ---------------------------------------------------------------------------------------

def corrections(p: Pipeline) -> list[str]:
    """Which corrections apply, in words."""
    cfg, out = p.cfg, []
    corrected = "log_pi" in p.caps
    if p.sampler.name == "all":
        return ["none needed: every target is a candidate (the exact full softmax)"]
    if "draws" in p.caps:
        out.append(f"drawn negatives: {p.sampler.correction}" if corrected else
                   "drawn negatives: uncorrected by design (no inclusion probabilities)")
    if cfg.inbatch and "pool" in p.loss.gives:
        if corrected:
            out.append("in-batch + drawn mixture: pi_ij = c_i(j) + pi_sampler(i, j), c_i(j) the batcher's expected "
                       "in-batch count" + (" (given the batch's queries where a sampler can draw j: shared negatives)"
                                           if cfg.share_negatives else ""))
        else:
            out.append("in-batch pool: uncorrected (the batch is the estimate)")
    if cfg.share_negatives:
        out.append("shared negatives: one pool of the batch's draws, each candidate weighted by the sum of every "
                   "query's pi (independent noise per query)" if corrected else "shared negatives: uncorrected pool")
    drops = [f"margin {cfg.margin}: above positive - margin"] if cfg.margin is not None else []
    if cfg.relative_margin is not None:
        drops.append(f"relative margin {cfg.relative_margin}: above positive - |positive| x relative margin")
    if cfg.max_score is not None:
        drops.append(f"max score {cfg.max_score}: above max score")
    if drops:
        out.append(f"{'; '.join(drops)}: rows whose stale score exceeds " + ("this" if len(drops) == 1 else
                   "any of these") + " leave the query's eligible set in every pool")
    if cfg.loss == "cache-surrogate":
        out.append("cache surrogate: (1 - p_pos) from the stale partition function of the pass")
    if cfg.memory == "contaccum":
        out.append("ContAccum bank: past embeddings as extra candidates, uncorrected")
    if cfg.memory == "accumulation" and corrected and cfg.inbatch:
        out.append(f"accumulation: in-batch counts of a micro-batch of {_micro(cfg)}")
    return out or ["none"]


def describe(cfg: TrainConfig) -> str:
    """The resolved pipeline, for ``negminer train --dry-run`` (checks first)."""
    p = check(cfg)
    k = cfg.num_negatives if "draws" in p.caps else 0
    lines = [f"negminer pipeline (dry run: nothing trained, nothing written)",
             f"  data        {cfg.data} (train split {cfg.train_split}, eval split {cfg.eval_split})",
             f"  encoder     {cfg.encoder}, {'shared' if cfg.shared else 'separate'} towers, {cfg.pooling} pooling, "
             f"tau {cfg.temperature}{' (learned)' if cfg.learn_temperature else ''}",
             f"  batching    {p.batcher.name}: {p.batcher.summary}; batch {cfg.batch_size}",
             f"  memory      {p.memory.name}: {p.memory.summary}",
             f"  sampler     {p.sampler.name}: {p.sampler.summary}" + (f"; k = {k}" if k else "")
             + (", with replacement" if k and (cfg.replacement or cfg.negatives in ("uniform", "tree")
                                              or cfg.loss == "cache-surrogate") else ""),
             f"  in-batch    {'yes' if cfg.inbatch and 'pool' in p.loss.gives else 'no'}"
             + (", shared negatives" if cfg.share_negatives else ""),
             "  refreshers  " + (" -> ".join(r.name for r in p.refreshers) if p.refreshers else "none"),
             f"  loss        {p.loss.name}: {p.loss.summary}",
             "  corrections"]
    lines += [f"    - {c}" for c in corrections(p)]
    opts = [o for part in p.parts() for o in part.options]
    if opts:
        lines.append("  options     " + ", ".join(f"{o}={getattr(cfg, o)}" for o in dict.fromkeys(opts)))
    lines += [f"  note        {n}" for n in p.notes]
    return "\n".join(lines)


def legal(cfg: TrainConfig) -> bool:
    try:
        check(cfg)
        return True
    except ConfigError:
        return False


def option_help(name: str) -> str:
    return describe_limit(name) if name in LIMITS else ""
