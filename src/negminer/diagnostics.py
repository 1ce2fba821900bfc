"""How close is a sampler to the exact softmax with fresh embeddings? (what no other library shows)

On a batch of queries, with every target re-encoded by the current model (fresh E):
  * p = exact softmax over the query's negatives (positives and duplicates removed), Q = the
    sampler's proposal: total variation 0.5 * sum |p - Q| and KL(p || Q) (Q floored at 1e-30);
  * top10_found: fraction of the exact top-10 negatives that the sampler's k draws contain;
  * the gradient of the training loss with respect to the query embeddings, computed with the
    sampler's negatives (fresh), against the exact full-softmax gradient:
    relative error ||g - g*|| / ||g*|| and cosine.
For small N only: it encodes all N targets.
"""

from __future__ import annotations

import math

import torch

from negminer.losses import SoftmaxLoss


def exact_gradient(q: torch.Tensor, E: torch.Tensor, pos_rows: torch.Tensor, exclude, scale: float) -> torch.Tensor:
    """d/dq of mean_i [ -s_pos + logsumexp(s_pos, s_negatives) ] over all N targets."""
    q = q.detach().clone().requires_grad_(True)
    mask = torch.zeros(len(q), len(E), dtype=torch.bool)
    for i, ex in enumerate(exclude):
        mask[i, list(ex)] = True
    SoftmaxLoss()(q, E[pos_rows], scale, pool=E, pool_mask=mask).backward()
    return q.grad


def sampler_gradient(q, E, batch, draw, scale: float, inbatch: bool, loss_name: str) -> torch.Tensor:
    from negminer.losses import build_loss
    from negminer.samplers import inbatch_mask

    q = q.detach().clone().requires_grad_(True)
    pos = E[batch.pos_rows]
    neg = E[draw.ids] if draw.ids.numel() else None
    if loss_name == "cache-surrogate":
        loss = build_loss(loss_name)(q, pos, scale, neg=neg, neg_mask=draw.mask, log_z=draw.log_z)
    else:
        pool_mask = inbatch_mask(batch.pos_rows.tolist(), batch.exclude) if inbatch else None
        loss = SoftmaxLoss()(q, pos, scale, pool=pos if inbatch else None, pool_mask=pool_mask, neg=neg,
                             neg_mask=draw.mask if neg is not None else None,
                             log_q=draw.log_q if neg is not None else None)
    loss.backward()
    return q.grad


def diagnose(q, E, batch, sampler, store, inbatch: bool = True, loss_name: str = "softmax") -> dict:
    """Diagnostics of ``sampler`` on one batch; ``q`` [B, d] and ``E`` [N, d] are fresh embeddings."""
    scale = batch.loss_scale
    n = len(E)
    mask = torch.zeros(len(q), n, dtype=torch.bool)
    for i, ex in enumerate(batch.exclude):
        mask[i, list(ex)] = True
    logp = ((q @ E.T) * scale).masked_fill(mask, -math.inf).log_softmax(-1)
    out = {}
    if sampler.k:
        logq = sampler.proposal(q, batch, store).clamp(min=-69.0)  # floor 1e-30
        p, Q = logp.exp(), logq.exp()
        out["tv"] = float(0.5 * (p - Q).abs().sum(1).mean())
        out["kl"] = float(torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(1).mean())
        draw = sampler.sample(q, batch, store)
    else:  # in-batch: a uniform proposal over the batch's other positives
        from negminer.samplers import Draw, inbatch_mask

        Q = (~inbatch_mask(batch.pos_rows.tolist(), batch.exclude)).float()
        Qn = torch.zeros(len(q), n)
        Qn.index_add_(1, batch.pos_rows, Q)
        Qn = Qn / Qn.sum(1, keepdim=True).clamp(min=1)
        p = logp.exp()
        out["tv"] = float(0.5 * (p - Qn).abs().sum(1).mean())
        out["kl"] = float((p * (logp - Qn.clamp(min=1e-30).log())).nan_to_num(0.0).sum(1).mean())
        draw = Draw.empty(len(q))
    top = logp.topk(10, dim=1).indices
    found = []
    for i in range(len(q)):
        drawn = set(draw.ids[i].tolist())
        if inbatch:
            drawn |= {int(r) for j, r in enumerate(batch.pos_rows.tolist()) if j != i}
        found.append(len(drawn & set(top[i].tolist())) / 10)
    out["top10_found"] = sum(found) / len(found)
    g_star = exact_gradient(q, E, batch.pos_rows, batch.exclude, scale)
    g = sampler_gradient(q, E, batch, draw, scale, inbatch, loss_name)
    out["grad_rel_error"] = float((g - g_star).norm() / g_star.norm().clamp(min=1e-12))
    out["grad_cosine"] = float(torch.nn.functional.cosine_similarity(g.flatten(), g_star.flatten(), dim=0))
    return out


@torch.no_grad()
def diagnose_trainer(trainer, step: int) -> dict:
    """Diagnostics on the batch of ``step`` (the store is read, not changed)."""
    idx, pos_rows = trainer._batch(step)
    m = trainer.model
    E = (trainer.store.embed(range(trainer.store.n), m, batch_size=trainer.cfg.eval_batch_size)
         if trainer.store is not None else m.encode_targets(trainer.target_inputs, batch_size=trainer.cfg.eval_batch_size))
    q = m.encode_queries([trainer.query_texts[i] for i in idx])
    batch = trainer.make_batch(step, idx, pos_rows, E[torch.as_tensor(pos_rows)])
    with torch.enable_grad():
        return {k: round(v, 6) for k, v in diagnose(q, E, batch, trainer.sampler, trainer.store,
                                                    trainer.cfg.inbatch, trainer.cfg.loss).items()}


def diagnose_command(args) -> int:
    """``negminer diagnose``: sampler diagnostics for a model on a dataset, printed as a table."""
    import tempfile
    from dataclasses import fields

    from negminer.config import TrainConfig, resolve
    from negminer.train.trainer import Trainer

    flags = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    if args.model:
        flags["encoder"] = args.model
    with tempfile.TemporaryDirectory() as tmp:
        flags["out"] = flags.get("out") or tmp
        cfg = resolve(flags)
        tr = Trainer(cfg)
        if tr.store is None:
            from negminer.store import TargetStore

            tr.store = TargetStore(tr.dataset.target_ids, tr.target_inputs, tr.model.dim, dtype=cfg.store_dtype)
        tr.sampler.setup(tr.store, tr.model, 0)
        rows = [diagnose_trainer(tr, s) for s in range(args.batches)]
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    print(f"sampler {cfg.negatives} (k={cfg.num_negatives}, inbatch={cfg.inbatch}) on {tr.dataset.name}, "
          f"{args.batches} batches of {cfg.batch_size}")
    for k, v in mean.items():
        print(f"  {k:<16}{v:>10.4f}")
    return 0
