"""NegativeCacheLoss: negminer's negative cache as a sentence-transformers loss (see negminer/st/__init__.py).

One training forward, for (anchor, positive) features from the trainer's collator:

    find each positive in the corpus (corpus.py: by token ids), exclude it, rows of the same text and the
        anchor's other positives (when the training set is known)
    embed anchors and positives with gradient (as MultipleNegativesRankingLoss does)
    at the first forward: fill the store (every corpus row encoded in eval mode, no gradient, batched)
    draw k negatives per anchor from softmax(stale score / tau_s) over the store (Gumbel-top-k, the
        sampler's inclusion probabilities log pi; negminer.samplers)
    re-encode the distinct drawn rows with gradient (negminer's target-tower negatives)
    the loss inputs from the draw and the in-batch pool (negminer.pipeline.assemble: the -log pi
        correction, the in-batch mixture, the margin's drops), negminer's SoftmaxLoss

and after the optimiser step (``after_step``, called by the callback's ``on_step_end``): the refreshers
(write-back of the positives and drawn rows the step encoded, fraction refresh of the oldest rows, ...)
in negminer's order. Which options combine is negminer's rule table (``rules.check``), the parts are
negminer's (``build_sampler``, ``build_refreshers``, ``TargetStore``).

The in-batch mixture needs the expected number of times a corpus row is another anchor's positive in a
random batch: (B - 1) / (n - 1) x (pairs of the training set whose positive is the row), from the
training set (the callback reads it from the trainer's train_dataset; ``set_train_dataset`` by hand).
Without it the count given the batch is used (unbiased too, with more variance; README).

Randomness: a step's draws come from a generator seeded by (seed, step, micro-batch); the fraction
refresh's random order from (seed, step). A resumed run draws what the uninterrupted one would.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from negminer import rng, rules
from negminer.config import TrainConfig
from negminer.errors import ConfigError
from negminer.losses import SoftmaxLoss
from negminer.pipeline.assemble import first_occurrence, log_count_given_batch, loss_inputs
from negminer.refreshers import build_refreshers
from negminer.samplers import build_sampler
from negminer.st.corpus import Corpus, token_rows
from negminer.store import TargetStore
from negminer.types import Batch, Draw, Exclusions, Fresh

logger = logging.getLogger(__name__)

CACHE_DIR = "negminer_cache"       # inside each Hugging Face checkpoint folder
STATE_FILE = "negminer_cache.json"
PARTS_FILE = "parts.safetensors"
SAMPLERS = ("cache", "exact", "uniform", "inbatch")
REFRESHERS = ("write-back", "fraction", "full", "nystrom")
LABEL_COLUMNS = ("label", "labels", "score", "scores", "dataset_name")


class NegativeCacheLoss(nn.Module):
    def __init__(self, model, corpus, num_negatives: int = 8, *, sampler: str = "cache", scale: float = 20.0,
                 similarity: str = "cos", sample_temperature: float | None = None, correction: bool = True,
                 inbatch: bool = True, margin: float | None = None, relative_margin: float | None = None,
                 max_score: float | None = None, refresh: str = "auto",
                 refresh_fraction: float = 0.0, refresh_order: str = "oldest", refresh_every: int = 0,
                 write_back: str = "eval", cache_size: int = 0, replacement: bool = False, store_dtype: str = "fp32",
                 dedupe_text: bool = True, corpus_prompt: str | None = None, encode_batch_size: int = 64,
                 seed: int | None = None, train_dataset=None):
        """``model``: a SentenceTransformer. ``corpus``: a list of texts or a dict id -> text holding every
        positive of the training pairs (and any other target worth drawing). ``num_negatives``: drawn per
        anchor (0: in-batch only, MultipleNegativesRankingLoss's loss). ``sampler``: cache (the negative
        cache: Gumbel-top-k over stale embeddings) | exact (the store re-encoded every ``refresh_every``
        steps, 1 by default) | uniform | inbatch. ``scale``: 1 / tau (20: MNRL's). ``similarity``: cos
        (MNRL's) | dot. ``sample_temperature``: tau_s of the draw (default 1 / scale). ``correction``: the
        -log pi correction of drawn (and mixed in-batch) negatives. ``inbatch``: the other anchors'
        positives are negatives too. ``margin``: drop candidates whose stale score is above positive -
        margin (likely unlabelled positives); ``relative_margin`` R: above positive - |positive| x R;
        ``max_score``: above it (sentence-transformers' mine_hard_negatives filters). ``refresh``: comma-separated refreshers, negminer's names
        (auto: write-back, + fraction when ``refresh_fraction`` > 0; exact: full). ``write_back``: eval |
        train | none. ``cache_size``: rows cached (0: the whole corpus). ``corpus_prompt``: the prompt the
        trainer applies to the positive column, if any (the corpus is tokenised with it). ``seed``: of the
        draws (default: the trainer's args.seed)."""
        super().__init__()
        self.model = model
        if similarity not in ("cos", "dot"):
            raise ValueError(f"similarity must be cos or dot, not {similarity!r}")
        if not (isinstance(scale, (int, float)) and scale > 0 and math.isfinite(scale)):
            raise ValueError(f"scale must be a positive number, not {scale!r}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, not {sampler!r}")
        if num_negatives == 0 or sampler == "inbatch":
            sampler, num_negatives, refresh = "inbatch", 0, "none"
        names = [n.strip() for n in str(refresh).split(",") if n.strip()]
        bad = [n for n in names if n not in REFRESHERS + ("auto", "none")]
        if bad:
            raise ValueError(f"refresh {bad[0]!r}: NegativeCacheLoss takes {', '.join(REFRESHERS)}, auto or none")
        self.scale, self.similarity, self.correction = float(scale), similarity, correction
        self.corpus = Corpus(corpus, dedupe_text)
        self.corpus_prompt, self.encode_batch_size, self.seed = corpus_prompt, encode_batch_size, seed
        self.cfg = TrainConfig(negatives=sampler, num_negatives=num_negatives, loss="softmax", inbatch=inbatch,
                               margin=margin, relative_margin=relative_margin, max_score=max_score,
                               sample_temperature=sample_temperature or 0.0, replacement=replacement,
                               refresh=",".join(names) or "none", refresh_fraction=refresh_fraction,
                               refresh_order=refresh_order, refresh_every=refresh_every, write_back=write_back,
                               cache_size=cache_size, store_dtype=store_dtype, dedupe_text=dedupe_text,
                               temperature=1.0 / self.scale, normalize=similarity == "cos", seed=seed or 0)
        try:
            self.pipeline = rules.check(self.cfg)  # negminer's rule table: what combines, with the reason
        except ConfigError as e:
            raise ValueError(f"{e} (NegativeCacheLoss takes the command line's options as keywords: --num-negatives "
                             "is num_negatives, --negatives is sampler)") from None
        self.softmax = SoftmaxLoss()
        self.sampler = build_sampler(self.cfg)
        self.store: TargetStore | None = None
        self.refreshers: list = []
        self.step = 0                    # optimiser steps taken (the trainer's global_step under the callback)
        self.query_encodes = 0           # anchors encoded with gradient
        self.grad_target_encodes = 0     # positives and drawn rows encoded with gradient
        self.stats: dict = {}            # the last step's: drawn_age, staleness, store ages, encode counts
        self.last: dict | None = None    # the last forward's embeddings, batch, draw and loss (detached)
        self._micro = 0                  # forwards of the current step (gradient accumulation)
        self._eval_calls = 0
        self._pending: list = []         # what this step encoded, for the refreshers
        self._ready = False
        self._attached = False
        self._callback = None
        self._train_counts = None        # RandomBatcher over the training pairs' positive rows
        self._anchor_positives: dict | None = None
        self.train_pairs = 0
        if train_dataset is not None:
            self.set_train_dataset(train_dataset)

    # ---- the public surface ---------------------------------------------------------------------
    def callback(self):
        """The TrainerCallback that steps this loss with the trainer: refreshers after each optimiser step,
        the cache saved in each checkpoint (``CHECKPOINT/negminer_cache/``) and restored on resume. Pass it
        as ``callbacks=[loss.callback()]``; a loss used without it adds it to its trainer at the first step."""
        if self._callback is None:
            from negminer.st.callback import NegativeCacheCallback

            self._callback = NegativeCacheCallback(self)
        return self._callback

    @property
    def refresh_encodes(self) -> int:
        """Corpus rows encoded without gradient: the fill, refreshes, eval-mode write-back of a dropout tower."""
        return self.store.target_encodes if self.store is not None else 0

    @property
    def target_encodes(self) -> int:
        """Every target encode: positives and drawn rows with gradient, plus ``refresh_encodes`` (as
        negminer's train_log counts them)."""
        return self.grad_target_encodes + self.refresh_encodes

    @property
    def corpus_ids(self) -> list[str]:
        return self.corpus.ids

    def get_config_dict(self) -> dict:
        """For sentence-transformers' model card."""
        c = self.cfg
        return {"num_negatives": c.num_negatives, "sampler": c.negatives, "scale": self.scale,
                "similarity": self.similarity, "correction": self.correction, "inbatch": c.inbatch,
                "margin": c.margin, "refresh": [p.name for p in self.pipeline.refreshers],
                "refresh_fraction": c.refresh_fraction, "write_back": c.write_back, "corpus_size": self.corpus.n}

    @property
    def temperature(self) -> float:
        return 1.0 / self.scale

    def set_train_dataset(self, dataset) -> None:
        """The training pairs (a datasets.Dataset whose first two text columns are anchor and positive, or a
        list of (anchor, positive)): how often each corpus row is a positive (the in-batch mixture's count)
        and each anchor's positives (all excluded as its negatives)."""
        from negminer.batching import RandomBatcher

        pairs = _pairs(dataset)
        if pairs is None:
            return
        anchors, positives = pairs
        self.corpus.index(self._preprocess_corpus, self._pad_id())
        pos_rows = self.corpus.find(token_rows(self._preprocess_corpus(list(positives)), self._pad_id()))
        _require_found(pos_rows, lambda i: positives[i], f"of the {len(pos_rows)} training positives",
                       "add them, e.g. corpus = list(dict.fromkeys(corpus + train_dataset['positive']))")
        akeys = [_key(r) for r in token_rows(self._preprocess(anchors), self._pad_id())]
        own: dict[bytes, set] = {}
        for k, r in zip(akeys, pos_rows):
            own.setdefault(k, set()).add(r)
        self._anchor_positives = own
        self.train_pairs = len(pos_rows)
        self._train_counts = RandomBatcher(len(pos_rows), 1, 0, [[r] for r in pos_rows], self.corpus.n)

    def forward(self, sentence_features, labels=None) -> torch.Tensor:
        feats = list(sentence_features)
        if len(feats) != 2:
            raise ValueError(f"NegativeCacheLoss takes (anchor, positive) pairs and draws the negatives itself; got "
                             f"{len(feats)} columns")
        training = torch.is_grad_enabled() and self.model.training
        if training and not self._attached:
            self._attach()
        self._ensure_ready()
        b = _batch_size(feats[0])
        pos_rows, excl, own = self._locate(feats[0], feats[1])
        q = self._embed(feats[0])
        p = self._embed(feats[1])
        batch = self._batch(pos_rows, excl, own, p, training)
        s = self.sampler
        draw = s.sample(q.detach(), batch, self.store) if s.k else Draw.empty(b)
        if not self.correction:
            draw = replace(draw, log_pi=None, pool_log_pi=None)
        neg, rows, emb = self._negatives(draw, b)
        kw = loss_inputs(self.softmax, q, p, self.scale, batch, draw, neg, self.cfg.inbatch, self._log_count(batch))
        loss = self.softmax(**kw)
        if training:
            self.query_encodes += b
            self.grad_target_encodes += b + (0 if rows is None else len(rows))
            self._pending.append((batch, draw, p.detach(), rows, None if emb is None else emb.detach()))
            self._micro += 1
        else:
            self._eval_calls += 1
        self.last = {"q": q.detach(), "pos": p.detach(), "neg": None if neg is None else neg.detach(), "batch": batch,
                     "draw": draw, "inputs": {k: v.detach() if torch.is_tensor(v) else v for k, v in kw.items()},
                     "loss": loss.detach(), "step": self.step}
        return loss

    def after_step(self) -> None:
        """After the optimiser step (the callback's on_step_end; by hand in a loop of your own): the write-back
        and the other refreshers in negminer's order, the sampler's bookkeeping, the step's statistics."""
        step, pending = self.step, self._pending
        self._pending, self._micro = [], 0
        self.step = step + 1
        st = self.store
        if not pending or st is None:
            return
        stats: dict = {}
        pos_rows = torch.cat([x[0].pos_rows for x in pending])
        pos_emb = torch.cat([x[2].float() for x in pending])
        drawn = [x[3] for x in pending if x[3] is not None]
        drawn_rows = drawn_emb = None
        if drawn:  # a row drawn in two micro-batches is one row of the step (first occurrence)
            drawn_rows = torch.cat(drawn)
            drawn_emb = torch.cat([x[4].float() for x in pending if x[3] is not None])
            keep = first_occurrence(drawn_rows)
            drawn_rows, drawn_emb = drawn_rows[keep], drawn_emb[keep.to(drawn_emb.device)]
            stats["drawn_age"] = float((step - st.age[drawn_rows].float()).mean())
        fresh = Fresh(step, pos_rows, pos_emb, drawn_rows, drawn_emb)
        for r in self.refreshers:
            if r.phase == "write_back":
                r.after_step(fresh)
        batch, draw = pending[-1][0], pending[-1][1]
        self.sampler.update(batch, draw, None, st, step + 1, encode=self._encode_rows)
        for r in self.refreshers:
            if r.phase != "write_back":
                r.after_step(fresh)
        for r in self.refreshers:
            stats.update(r.stats)
        pool = self.sampler.pool_rows(st)
        age = st.age if pool is None else st.age[pool]
        age = age[age >= 0].float()
        if len(age):
            stats["store_age_mean"] = float((step + 1 - age).mean())
            stats["store_age_max"] = float((step + 1 - age).max())
        stats.update(step=step + 1, query_encodes=self.query_encodes, target_encodes=self.target_encodes,
                     refresh_encodes=self.refresh_encodes)
        self.stats = stats

    # ---- checkpoints -----------------------------------------------------------------------------
    def save_cache(self, folder) -> Path:
        """The store (``store.npy``, ``store_age.npy``), the sampler's and refreshers' tensors
        (``parts.safetensors``) and everything else as JSON (step, seed, counters, the corpus's
        fingerprint) into ``folder``, atomically (a temporary sibling renamed into place). Never pickle."""
        from safetensors.torch import save_file

        from negminer.fileio import atomic_dir
        from negminer.train.checkpoint import part_states

        folder = Path(folder)
        with atomic_dir(folder) as tmp:
            meta = {"format": 1, "step": self.step, "seed": self._seed(), "filled": self.store is not None,
                    "query_encodes": self.query_encodes, "grad_target_encodes": self.grad_target_encodes,
                    "refresh_encodes": self.refresh_encodes, "corpus_size": self.corpus.n,
                    "corpus_fingerprint": self.corpus.fingerprint(), "options": self.get_config_dict(),
                    "stats": self.stats}
            if self.store is not None:
                self.store.save(tmp)
                tensors, meta["parts"] = part_states(self._parts())
                save_file(tensors, str(tmp / PARTS_FILE))
            (tmp / STATE_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        return folder

    def load_cache(self, folder) -> dict:
        """Restore what ``save_cache`` wrote (the store as saved: no encode); returns its JSON."""
        from safetensors.torch import load_file

        from negminer.train.checkpoint import load_parts

        folder = Path(folder)
        meta = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        if meta.get("corpus_size") != self.corpus.n or meta.get("corpus_fingerprint") != self.corpus.fingerprint():
            raise ValueError(f"{folder}: this negative cache was built over another corpus ({meta.get('corpus_size')} "
                             f"rows); the loss has {self.corpus.n}")
        self.seed = meta["seed"]
        self.step = meta["step"]
        self.query_encodes, self.grad_target_encodes = meta["query_encodes"], meta["grad_target_encodes"]
        self.stats = meta.get("stats", {})
        self._pending, self._micro = [], 0
        if not meta.get("filled"):
            return meta  # saved before the first forward: filled then
        self._build()
        self.store.load(folder, meta["refresh_encodes"])
        load_parts(self._parts(), load_file(str(folder / PARTS_FILE)), meta.get("parts", {}))
        self._setup_parts()
        self._ready = True
        return meta

    # ---- parts ------------------------------------------------------------------------------------
    def _seed(self) -> int:
        return int(self.seed) if self.seed is not None else 0

    def _parts(self) -> dict:
        return {"sampler": self.sampler, **{f"refresher.{r.name}": r for r in self.refreshers}}

    def _uses_store(self) -> bool:
        return bool(self.sampler.k and self.sampler.needs_store)

    def _build(self) -> None:
        """Corpus index, sampler (with the final seed), store and refreshers; nothing encoded."""
        from negminer.train.helpers import has_dropout

        self.corpus.index(self._preprocess_corpus, self._pad_id())
        self.cfg = replace(self.cfg, seed=self._seed())
        self.sampler = build_sampler(self.cfg)
        self.store, self.refreshers = None, []
        if not self._uses_store():
            return
        self.store = TargetStore(self.corpus.ids, self.corpus.texts, self._dim(), dtype=self.cfg.store_dtype)
        dev = self._device()
        if dev.type == "cuda":
            self.store.feed_device = dev  # a CPU store scored on the GPU through pinned memory
        self.refreshers = build_refreshers(self.cfg, self.store.dim, dropout=has_dropout(self.model))
        k, pool = self.sampler.k, self.sampler.pool_size(self.store)
        if not self.sampler.replacement and k > pool - 1:
            raise ValueError(f"num_negatives {k} but the sampler draws from {pool} corpus rows: use at most {pool - 1}")

    def _setup_parts(self) -> None:
        """The sampler's setup (the store's first fill, when never encoded) and the refreshers' binding."""
        if self.store is None:
            return
        self.sampler.setup(self.store, None, self.step, encode=self._encode_rows)
        for r in self.refreshers:
            r.setup(self.store, self.sampler.pool_rows(self.store), self._encode_rows, self._seed())

    def _ensure_ready(self) -> None:
        if self._ready:
            return
        self._build()
        self._setup_parts()
        self._ready = True

    def _attach(self) -> None:
        """Used without its callback inside a Hugging Face Trainer: add it (and do what its on_train_begin does)."""
        self._attached = True
        trainer = _find_trainer()
        if trainer is None:
            return
        from negminer.st.callback import NegativeCacheCallback

        if any(isinstance(c, NegativeCacheCallback) and c.loss is self for c in trainer.callback_handler.callbacks):
            return
        cb = self.callback()
        trainer.add_callback(cb)
        logger.info("NegativeCacheLoss: added its callback to the trainer (pass callbacks=[loss.callback()] to do it "
                    "yourself)")
        cb.on_train_begin(trainer.args, trainer.state, trainer.control, train_dataset=trainer.train_dataset)

    # ---- encoding ---------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _dim(self) -> int:
        for name in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
            fn = getattr(self.model, name, None)
            if fn is not None:
                d = fn()
                if d:
                    return int(d)
        return int(self._embed_rows(torch.tensor([0])).shape[1])

    def _pad_id(self) -> int | None:
        tok = getattr(self.model, "tokenizer", None)
        return getattr(tok, "pad_token_id", None)

    def _preprocess(self, texts, prompt: str | None = None) -> dict:
        """What the trainer's collator makes of a column's texts (``tokenize`` before sentence-transformers 5)."""
        fn = getattr(self.model, "preprocess", None)
        if fn is not None:
            return fn(list(texts), prompt=prompt)
        return self.model.tokenize([prompt + t for t in texts] if prompt else list(texts))

    def _preprocess_corpus(self, texts) -> dict:
        return self._preprocess(texts, self.corpus_prompt)

    def _features(self, rows) -> dict:
        f = self._preprocess_corpus([self.corpus.texts[int(r)] for r in rows])
        dev = self._device()
        return {k: v.to(dev) if torch.is_tensor(v) else v for k, v in f.items()}

    def _embed(self, features) -> torch.Tensor:
        e = self.model(features)["sentence_embedding"]
        return F.normalize(e, p=2, dim=-1) if self.similarity == "cos" else e

    def _embed_rows(self, rows) -> torch.Tensor:
        """float32 CPU embeddings of corpus rows: eval mode, no gradient, batched (the store's encodes)."""
        rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
        was = self.model.training
        self.model.eval()
        out = []
        try:
            with torch.no_grad():
                for s in range(0, len(rows), self.encode_batch_size):
                    out.append(self._embed(self._features(rows[s:s + self.encode_batch_size])).float().cpu())
        finally:
            self.model.train(was)
        return torch.cat(out) if out else torch.zeros(0, self.store.dim if self.store is not None else 0)

    def _encode_rows(self, rows, step: int):
        """The refreshers' and the sampler's encode: re-encode store rows, write them with their age, counted."""
        return self.store.encode(rows, None, step, batch_size=self.encode_batch_size, embed=self._embed_rows)

    # ---- one forward ------------------------------------------------------------------------------
    def _locate(self, anchor_feats, pos_feats):
        """Each positive's corpus row; per anchor, the rows never to use as its negatives (its positives and
        their duplicates) and its own positive row."""
        pad = self._pad_id()
        pos_rows = self.corpus.find(token_rows(pos_feats, pad))
        _require_found(pos_rows, lambda i: self._text_of(pos_feats, i), "positive(s) of this batch",
                       "add every positive of the training (and evaluation) pairs to the corpus")
        others = [set()] * len(pos_rows)
        if self._anchor_positives is not None:
            others = [self._anchor_positives.get(_key(a), set()) for a in token_rows(anchor_feats, pad)]
        excl = []
        for r, extra in zip(pos_rows, others):
            rows = self.corpus.group(r)
            for o in extra:
                rows |= self.corpus.group(o)
            excl.append(rows)
        return pos_rows, excl, others

    def _text_of(self, feats, i: int) -> str:
        try:
            return self.model.tokenizer.decode(token_rows(feats, self._pad_id())[i].tolist())
        except Exception:  # noqa: BLE001 - only for the message
            return f"row {i} of the batch"

    def _batch(self, pos_rows, excl, own, p, training: bool) -> Batch:
        b, n = len(pos_rows), self.corpus.n
        part = f"st-draw-{self._micro}" if training else f"st-eval-{self._eval_calls}"
        seed = rng.seed_of(self._seed(), self.step, part)
        g = torch.Generator().manual_seed(seed)
        dev = self.store.scoring_device if self.store is not None else torch.device("cpu")
        dg = torch.Generator(device=dev).manual_seed(seed) if dev.type != "cpu" else None
        return Batch(self.step, torch.as_tensor(pos_rows, dtype=torch.long), Exclusions(excl, n), p.detach(), g,
                     self.scale, dg, torch.arange(b), Exclusions([{r} for r in pos_rows], n))

    def _negatives(self, draw: Draw, b: int):
        """[B, k, d] embeddings of the drawn rows, each distinct usable row encoded once with gradient (masked
        slots zero); the distinct rows and their embeddings (for the write-back)."""
        if not draw.ids.numel() or not bool((~draw.mask).any()):
            return None, None, None
        ok = ~draw.mask
        rows, inv = draw.ids[ok].unique(return_inverse=True)
        emb = self._embed(self._features(rows))
        neg = emb.new_zeros(*draw.ids.shape, emb.shape[-1])
        neg[ok.to(neg.device)] = emb[inv.to(emb.device)]
        return neg, rows, emb

    def _log_count(self, batch: Batch):
        """log expected count of target rows among an anchor's in-batch negatives (the in-batch mixture):
        over random batches of the training pairs when they are known, else given this batch."""
        b = len(batch.pos_rows)
        if self._train_counts is not None:
            return lambda rows, queries=None: self._train_counts.log_batch_count(rows, queries, size=b)

        def given(rows, queries=None):
            rows = rows.cpu().reshape(len(rows), -1)
            return log_count_given_batch(batch, rows.expand(b, -1) if len(rows) == 1 else rows)
        return given


# ---- helpers ---------------------------------------------------------------------------------------

def _key(ids) -> bytes:
    return np.asarray(ids, dtype=np.int64).tobytes()


def _batch_size(features: dict) -> int:
    ids = features["input_ids"]
    return len(features["offsets"]) if ids.dim() == 1 and "offsets" in features else len(ids)


def _pairs(dataset):
    """(anchors, positives) from a datasets.Dataset (its first two text columns) or a list of pairs; None for
    what cannot be read whole (an IterableDataset, a DatasetDict)."""
    names = getattr(dataset, "column_names", None)
    if isinstance(names, list) and hasattr(dataset, "__len__"):
        cols = [c for c in names if c not in LABEL_COLUMNS]
        if len(cols) < 2:
            return None
        return list(dataset[cols[0]]), list(dataset[cols[1]])
    if names is not None:
        return None
    if isinstance(dataset, (list, tuple)) and all(isinstance(x, (list, tuple)) and len(x) >= 2 for x in dataset):
        return [x[0] for x in dataset], [x[1] for x in dataset]
    return None


def _find_trainer():
    """The Hugging Face Trainer calling this forward, if any (its compute_loss is up the stack)."""
    mod = sys.modules.get("transformers.trainer")
    cls = getattr(mod, "Trainer", None)
    if cls is None:
        return None
    f = sys._getframe(2)
    for _ in range(40):
        if f is None:
            return None
        obj = f.f_locals.get("self")
        if isinstance(obj, cls):
            return obj
        f = f.f_back
    return None


def _require_found(rows, text, what: str, fix: str) -> None:
    """ValueError when a positive has no corpus row (it could not be excluded from its own negatives)."""
    missing = [i for i, r in enumerate(rows) if r is None]
    if missing:
        raise ValueError(f"{len(missing)} {what} are not in the corpus (the first: {text(missing[0])!r}); "
                         f"NegativeCacheLoss finds each positive in the corpus to exclude it from its negatives: "
                         f"{fix}; with prompts, pass corpus_prompt")
