"""Is the training loss an unbiased estimate of the full softmax for this configuration? (``negminer audit``)

A sampled softmax stays right only if every candidate's weight is its expected count in the query's
pools (in-batch, drawn, other queries' draws) and every query scores the same eligible set of
targets, whichever pool brings them. ``audit_draws`` checks that for a set of anchor queries: it
repeats K times everything random in a step around them (the batch the batcher would put each in,
from a fresh layout of the epoch, the micro-batch under accumulation, the positive drawn for each
query, the negative draw), assembles the loss inputs exactly as training does
(``pipeline.loss_inputs``) with every candidate scored with fresh embeddings, and compares with
brute force over every target:

    z_ratio         mean over anchors and draws of Z_hat / Z. Z sums exp(<q, fresh> / tau) over the
                    anchor's eligible targets (not a positive or the duplicate of one, not dropped by
                    the margin, which compares stale scores with the drawn positive's) that the pipeline
                    can reach: the sampler's candidates (all targets, or a partial cache, a stream's
                    queue, each query's prefilter top K) and, with the in-batch pool, every target some
                    training query has as a positive. Z_hat sums the loss's negative terms, each divided
                    by its expected count (its denominator without the positive). Unbiased: 1 within
                    ``z_ratio_se``.
    z_tail_index    Hill's tail index of the Z_hat / Z samples (``tail_index``): above 1/2 (``heavy_tail``) a
                    few rare draws carry the mean, the standard error understates the error, and a miss of
                    3 standard errors needs more draws before it means bias (uniform draws over 84K targets
                    on gcide-rd: 0.62; the cache: 0.14).
    z_coverage      mean share of the full partition function (every eligible target) that is
                    reachable: 1 for samplers over all targets; below 1 a subset sampler estimates a
                    truncated softmax, by design.
    zgrad_t         || mean (grad_q Z_hat - grad_q Z) / Z ||^2 over its expected squared standard
                    error: about 1 when the gradient of the estimate is unbiased, growing with the
                    draws when it is not.
    grad_rel_bias   || mean sampled d loss / d q - exact || / || exact ||, the exact gradient being the
                    loss with every eligible target (``grad_rel_bias_se``: the same norm of the noise
                    alone). The loss is a nonlinear function of Z_hat, so a small bias that shrinks
                    with k remains even for an unbiased Z_hat; reported, not a pass/fail.

Standard errors come from the per-draw means (draws are independent; anchors in one batch are not).
Where a configuration has no correction by design (in-batch alone, ANCE, mined lists, exact top-k,
ContAccum's bank, the cache surrogate) there is no Z_hat to check and the result says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from negminer.losses.decoupled import candidate_scores
from negminer.pipeline import all_inputs, loss_inputs
from negminer.types import Batch, Exclusions

NEG_INF = -math.inf


@dataclass
class Setup:
    """The pieces of a step as training builds them."""

    sampler: object
    store: object                                     # None for samplers without one
    batcher: object
    loss: torch.nn.Module
    make_batch: Callable[..., Batch]                  # (step, idx, pos_rows, pos_emb, micro) -> Batch
    positives: list[list[int]]                        # per training query, its positive rows
    exclude: Callable[[int], set[int]]                # per training query, rows never negatives
    inbatch: bool = True
    share: bool = False
    accumulation: int = 1
    negative_grad: str = "target"                     # none: drawn negatives scored with the stored embeddings


def log_z_hat(kw: dict) -> torch.Tensor | None:
    """[B] log of the loss's estimate of each query's partition function over its negatives, from the
    inputs ``loss_inputs`` assembled; None when some negative term carries no correction."""
    if "pool" not in kw and "neg" not in kw:
        return None
    args = {k: kw.get(k) for k in ("pool", "pool_mask", "pool_log_pi", "neg", "neg_mask", "neg_log_pi", "pool_pos")}
    s, _, is_neg, log_pi = candidate_scores(kw["q"], kw["pos"], kw["scale"], **args)
    sampled = (kw.get("pool") is not None and kw.get("pool_log_pi") is None) or \
              (kw.get("neg") is not None and kw.get("neg_log_pi") is None)
    if sampled or log_pi is None:
        return None
    return (s - log_pi).masked_fill(~is_neg, NEG_INF).logsumexp(1)


def no_correction(setup: Setup, loss_name: str, cfg=None) -> str | None:
    """Why this configuration has no partition-function estimate to check (None: it has one)."""
    s = setup.sampler
    if getattr(s, "all_targets", False):
        return "every target is a negative (--negatives all): the loss is exact, nothing is estimated"
    if loss_name == "cache-surrogate":
        return "the cache surrogate uses the stale partition function from the pass, not an estimate of the fresh one"
    if loss_name == "triplet":
        return "the triplet loss takes the hardest negatives as found: no correction by design"
    if cfg is not None and cfg.memory == "contaccum":
        return "ContAccum's bank holds past batches' targets without inclusion probabilities: no correction by design"
    if not s.k:
        return "in-batch negatives alone are uncorrected by design (the batch is the estimate)"
    if s.name in ("ance", "mined") or getattr(s, "selection", "sample") == "topk":
        return f"--negatives {s.name}{' --selection topk' if s.name == 'exact' else ''} draws without " \
               "inclusion probabilities: no correction by design"
    return None


def eligible(setup: Setup, q: torch.Tensor, p_emb: torch.Tensor, anchor: int, n: int, micro: int):
    """([n] bool, [n] bool): the targets anchor's estimate is over for the drawn positive ``p_emb`` (not
    excluded, not above the margin by the stale score; rows outside the sampler's candidates are never
    dropped), and those of them the pipeline can reach (the sampler's candidates; in-batch: every target
    the batcher can bring into a (micro-)batch of ``micro`` with the anchor)."""
    ok = torch.ones(n, dtype=torch.bool)
    ok[torch.as_tensor(sorted(setup.exclude(anchor)), dtype=torch.long)] = False
    s, rows = setup.sampler, torch.arange(n)
    shared = s.candidates(setup.store) if s.k and setup.store is not None else None
    # every filter set (margin, relative margin, max score): the sampler's threshold for this positive
    over = s.threshold((q.float() * p_emb.float()).sum().reshape(1)) if getattr(s, "filters", False) else None
    if over is not None and setup.store is not None:
        drop = setup.store.scores(q.unsqueeze(0), rows).cpu()[0] > float(over[0])
        if shared is not None:
            drop &= torch.isin(rows, shared.cpu())
        ok &= ~drop
    if not s.k:
        reach = torch.zeros(n, dtype=torch.bool)
    else:
        own = s.candidates(setup.store, q.unsqueeze(0)) if setup.store is not None else None
        reach = torch.ones(n, dtype=torch.bool) if own is None else torch.isin(rows, own.reshape(-1).cpu())
    if setup.inbatch and "pool" in setup.loss.needs:
        reach |= torch.isfinite(setup.batcher.log_batch_count(rows.unsqueeze(0), torch.tensor([anchor]), size=micro)[0])
    return ok, ok & reach


def audit_draws(setup: Setup, query_emb: Callable[[np.ndarray], torch.Tensor], fresh: torch.Tensor,
                anchors: list[int], draws: int, epoch: int = 0, step: int = 0, seed: int = 0,
                progress: bool = False) -> dict:
    """Repeat the randomness of step ``step`` (in ``epoch``) ``draws`` times around ``anchors`` (training-query
    indices) and compare the loss's estimates with brute force; ``query_emb(idx) -> [len, d]`` fresh query embeddings, ``fresh``
    [N, d] every target's fresh embedding. See the module docstring for the figures returned."""
    b_all, k_acc = setup.batcher.batch_size, setup.accumulation
    b = b_all // k_acc
    nbat = setup.batcher.batches_per_epoch
    anchors = [int(a) for a in anchors]
    want = set(anchors)
    n = len(fresh)
    z_rows, zg_rows, g_rows, gs_rows, cover = [], [], [], [], []  # (draw, anchor, value)
    memo: dict = {}
    if hasattr(setup.batcher, "prepare") and hasattr(setup.batcher, "_perm_epoch"):
        setup.batcher.batch(epoch * nbat)  # the epoch's groups (NGAME), for the batcher's counts
    from tqdm.auto import tqdm

    for r in tqdm(range(draws), disable=not progress, desc="audit", unit="draw"):
        order = setup.batcher.layout(epoch, salt=seed * 1_000_003 + r)[: nbat * b_all]
        where = {int(x): i for i, x in enumerate(order) if int(x) in want}
        micro = sorted({(i // b_all, (i % b_all) // b) for i in where.values()})
        for bi, j in micro:
            idx = order[bi * b_all + j * b: bi * b_all + (j + 1) * b]
            rng = np.random.default_rng([seed, r, bi, j, 29])
            pos_rows = [setup.positives[i][rng.integers(len(setup.positives[i]))] for i in idx]
            pr = torch.as_tensor(pos_rows, dtype=torch.long)
            q = query_emb(idx).float()
            p = fresh[pr]
            batch = setup.make_batch((1 << 30) + r * nbat + bi, idx, pos_rows, p, j if k_acc > 1 else 0)
            batch.step = step  # its own generator, but the step the audit repeats (indexes rebuilt on schedule stay)
            draw = setup.sampler.sample(q, batch, setup.store) if setup.sampler.k else _empty(len(idx))
            neg = None
            if draw.ids.numel():
                src = setup.store.embeddings(draw.ids.reshape(-1)).view(*draw.ids.shape, -1) \
                    if setup.negative_grad == "none" else fresh[draw.ids]
                neg = src.masked_fill(draw.mask.unsqueeze(-1), 0.0)
            count = None
            if setup.inbatch and hasattr(setup.batcher, "log_batch_count"):
                def count(rows, queries=None, _b=b):
                    return setup.batcher.log_batch_count(rows, queries, size=_b)
            qq = q.clone().requires_grad_(True)
            kw = loss_inputs(setup.loss, qq, p, batch.loss_scale, batch, draw, neg, setup.inbatch, count, setup.share)
            lzh = log_z_hat(kw)
            if lzh is None:
                raise ValueError("audit: this configuration's loss has uncorrected negative terms")
            rows = [i for i, x in enumerate(idx) if int(x) in want]
            exact = []
            for i in rows:  # a function of (anchor, drawn positive) only: computed once
                key = (int(idx[i]), int(pos_rows[i]))
                if key not in memo:
                    memo[key] = _exact(setup, q[i], p[i], int(idx[i]), fresh, batch.loss_scale, pos_rows[i], b)
                exact.append(memo[key])
            lz = torch.stack([e[0] for e in exact])
            empty = torch.isneginf(lz)  # nothing reachable for this anchor and positive: Z_hat must be 0 too
            if bool(empty.any()) and bool(torch.isfinite(lzh[rows].detach()[empty]).any()):
                raise ValueError("audit: a positive partition-function estimate where no target is reachable")
            keep = [t for t in range(len(rows)) if not bool(empty[t])]
            rows, exact, lz = [rows[t] for t in keep], [exact[t] for t in keep], lz[~empty]
            if not rows:
                continue
            ratio = (lzh[rows].detach() - lz).exp()
            gz = torch.autograd.grad((lzh[rows] - lz).exp().sum(), qq, retain_graph=True)[0][rows]
            gl = torch.autograd.grad(setup.loss(**kw) * len(idx), qq)[0][rows]
            for t, i in enumerate(rows):
                a = int(idx[i])
                z_rows.append((r, a, float(ratio[t])))
                cover.append(float(exact[t][3]))
                zg_rows.append((r, a, gz[t] - exact[t][1]))
                if exact[t][2] is not None:
                    g_rows.append((r, a, gl[t] - exact[t][2]))
                    gs_rows.append((r, a, exact[t][2]))
    out = _summary(z_rows, zg_rows, g_rows, gs_rows, draws, len(anchors))
    out["z_coverage"] = float(np.mean(cover)) if cover else math.nan
    return out


def _empty(b: int):
    from negminer.types import Draw

    return Draw.empty(b)


def _exact(setup: Setup, q: torch.Tensor, p: torch.Tensor, anchor: int, fresh: torch.Tensor, scale: float,
           pos_row: int, micro: int):
    """(log Z, grad_q Z / Z over the reachable targets, the exact loss gradient or None, coverage) for one anchor
    and its drawn positive."""
    ok_all, ok = eligible(setup, q, p, anchor, len(fresh), micro)
    raw = (fresh @ q.float()) * scale
    logits = raw.masked_fill(~ok, NEG_INF)
    lz = logits.logsumexp(0)
    coverage = (lz - raw.masked_fill(~ok_all, NEG_INF).logsumexp(0)).exp()
    gz = scale * (logits - lz).exp() @ fresh
    one = Batch(0, torch.tensor([pos_row]), Exclusions([setup.exclude(anchor)], len(fresh)), p.unsqueeze(0),
                torch.Generator(), scale, positives=Exclusions([set(setup.positives[anchor])], len(fresh)))
    qq = q.float().unsqueeze(0).clone().requires_grad_(True)
    kw = all_inputs(setup.loss, qq, scale, one, fresh)
    if "pool" not in getattr(setup.loss, "needs", ()):
        return lz, gz, None, coverage
    kw["pool_mask"] = kw["pool_mask"] | ~ok.unsqueeze(0)
    kw["pool_mask"][0, pos_row] = True
    g = torch.autograd.grad(setup.loss(**kw), qq)[0][0]
    return lz, gz, g, coverage


def _summary(z_rows, zg_rows, g_rows, gs_rows, draws: int, anchors: int) -> dict:
    z = np.array([v for _, _, v in z_rows])
    per_draw: dict[int, list[float]] = {}
    for r, _, v in z_rows:
        per_draw.setdefault(r, []).append(v)
    dm = np.array([np.mean(v) for v in per_draw.values()])
    out = {"z_ratio": float(z.mean()), "z_ratio_se": float(dm.std(ddof=1) / math.sqrt(len(dm))) if len(dm) > 1 else math.nan,
           "draws": draws, "anchors": anchors, "instances": len(z), "z_tail_index": tail_index(z)}
    bias2, noise2, _ = _vector_bias(zg_rows)
    out["zgrad_t"] = float(bias2 / noise2) if noise2 > 0 else math.nan
    if g_rows:
        bias2, noise2, _ = _vector_bias(g_rows)
        _, _, scale = _vector_bias(gs_rows)
        out["grad_rel_bias"] = float(math.sqrt(bias2) / scale)
        out["grad_rel_bias_se"] = float(math.sqrt(noise2) / scale)
    return out


def tail_index(x: np.ndarray) -> float:
    """Hill's estimate (Ann. Statist. 1975) of the tail index xi of positive samples, over the largest
    m = min(n / 5, 3 sqrt n) (the tail size of Vehtari et al.'s Pareto-smoothed importance sampling, JMLR 2024):
    mean log(x_(i) / x_(m+1)). Above 1/2 the variance is likely infinite, so a standard error understates the
    error of the mean; nan below 20 samples."""
    x = np.sort(np.asarray(x, dtype=float))[::-1]
    m = int(min(len(x) / 5, 3 * math.sqrt(len(x))))
    if len(x) < 20 or m < 2 or x[m] <= 0:
        return math.nan
    return float(np.mean(np.log(x[:m] / x[m])))


def _vector_bias(rows) -> tuple[float, float, float]:
    """Per anchor the mean of its vectors: (sum ||mean||^2, sum of tr(cov) / count, sqrt of sum ||mean||^2)."""
    by: dict[int, list[torch.Tensor]] = {}
    for _, a, v in rows:
        by.setdefault(a, []).append(v.detach().double())
    b2 = n2 = 0.0
    for vs in by.values():
        x = torch.stack(vs)
        b2 += float(x.mean(0).pow(2).sum())
        if len(x) > 1:
            n2 += float(x.var(0).sum()) / len(x)
    return b2, n2, math.sqrt(b2)


def audit_command(args) -> int:
    """``negminer audit``: the check above for a user's own configuration and data, built exactly as ``train``
    builds it (training ``--at-step`` steps first); one JSON object on stdout."""
    import json
    import sys
    import tempfile
    import time

    from negminer import rules
    from negminer.cli import train_config
    from negminer.train.trainer import Trainer

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.out:
            args.out = tmp
        cfg = train_config(args)
        p = rules.check(cfg)
        tr = Trainer(cfg, hooks=[])
        tr.setup_sampler()
        tr.model.train()
        for s in range(args.at_step):
            tr.train_step(s)
        micro = cfg.accumulation if cfg.memory in ("accumulation", "contaccum") else 1
        setup = Setup(tr.sampler, tr.store, tr.batcher, tr.loss_fn, tr.make_batch, tr.pos_lists, tr.exclude,
                      cfg.inbatch, cfg.share_negatives, micro, cfg.negative_grad)
        out = {"pipeline": pipeline_summary(p), "at_step": args.at_step, "targets": tr.dataset.num_targets,
               "training_queries": len(tr.qids)}
        why = no_correction(setup, cfg.loss, cfg)
        if why is not None:
            out.update(corrected=False, note=why, seconds=round(time.perf_counter() - t0, 1))
            print(json.dumps(out))
            return 0
        tr.model.eval()
        with torch.no_grad():
            fresh = tr.store.embed(range(tr.dataset.num_targets), tr.model, batch_size=cfg.eval_batch_size,
                                   progress=not cfg.quiet) if tr.store is not None else \
                tr.model.encode_targets(tr.target_inputs, batch_size=cfg.eval_batch_size, progress=not cfg.quiet)
        fresh = fresh.float().cpu()
        memo: dict[int, torch.Tensor] = {}

        def query_emb(idx):
            missing = [int(i) for i in idx if int(i) not in memo]
            if missing:
                with torch.no_grad():
                    e = tr.model.encode_queries([tr.query_texts[i] for i in missing], batch_size=cfg.eval_batch_size)
                memo.update(zip(missing, torch.as_tensor(e).float().cpu()))
            return torch.stack([memo[int(i)] for i in idx])

        rng = np.random.default_rng([cfg.seed, 97])
        anchors = sorted(rng.choice(len(tr.qids), size=min(args.anchors, len(tr.qids)), replace=False).tolist())
        epoch, _ = tr.batcher.position(args.at_step)
        r = audit_draws(setup, query_emb, fresh, anchors, args.draws, epoch=epoch, step=args.at_step, seed=cfg.seed,
                        progress=not cfg.quiet)
    out.update(corrected=True, **{k: ((None if math.isnan(v) else round(v, 6)) if isinstance(v, float) else v)
                                  for k, v in r.items()})  # strict JSON: null, not NaN
    out["within_3_se"] = bool(abs(r["z_ratio"] - 1) < 3 * r["z_ratio_se"])
    out["heavy_tail"] = bool(r["z_tail_index"] > 0.5)  # nan (too few samples) is not heavy
    if cfg.negative_grad == "none":
        out["note"] = ("--negative-grad none scores drawn negatives with their cached embeddings: the estimate is of "
                       "a partition function over stale scores, so z_ratio measures the store's staleness too")
    elif r.get("z_coverage", 1.0) < 0.999:
        out["note"] = ("the sampler draws from a subset (partial cache, stream queue or prefilter top K): the loss "
                       "estimates the partition function over the reachable targets, which hold z_coverage of it")
    if out["heavy_tail"]:
        out["note"] = ((out["note"] + "; ") if "note" in out else "") + (
            "Z_hat / Z is heavy-tailed (z_tail_index > 0.5: a few draws of high-scoring targets with a small inclusion "
            "probability carry the mean), so z_ratio_se understates the error and a miss of 3 standard errors is "
            "not evidence of bias: rerun with more --draws, or use a proposal closer to the softmax")
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out))
    if not out["within_3_se"] and not cfg.quiet:
        print("negminer: audit: z_ratio is more than 3 standard errors from 1: " + (
              "the estimate is heavy-tailed, so this is not yet evidence of bias (rerun with more --draws)"
              if out["heavy_tail"] else "the loss is a biased estimate for this configuration (rerun with more "
              "--draws to confirm)"), file=sys.stderr)
    return 0


def pipeline_summary(p) -> dict:
    """The resolved pipeline as JSON (rules.Pipeline)."""
    from negminer import rules

    cfg = p.cfg
    return {"batching": p.batcher.name, "memory": p.memory.name, "sampler": p.sampler.name,
            "num_negatives": cfg.num_negatives if "draws" in p.caps else 0, "inbatch": bool(cfg.inbatch),
            "share_negatives": bool(cfg.share_negatives), "margin": cfg.margin,
            "relative_margin": cfg.relative_margin, "max_score": cfg.max_score,
            "refreshers": [r.name for r in p.refreshers], "loss": p.loss.name, "corrections": rules.corrections(p)}
