"""How close is a sampler to the exact softmax with fresh embeddings? (what no other library shows)

On a batch of queries, with every target re-encoded by the current model (fresh E):
  * p = exact softmax over the query's negatives (positives and duplicates removed), Q = the
    sampler's proposal: total variation 0.5 * sum |p - Q| and KL(p || Q) (Q floored at 1e-30);
  * top10_found: fraction of the exact top-10 negatives that the sampler's k draws contain;
  * the gradient of the training loss with respect to the query embeddings, computed with the
    sampler's negatives (fresh), against the exact full-softmax gradient:
    relative error ||g - g*|| / ||g*|| and cosine;
  * the store's staleness: squared relative embedding error and mean absolute logit error (``staleness``).
For small N only: it encodes all N targets.
"""

from __future__ import annotations

import math

import torch

from negminer.losses import SoftmaxLoss, build_loss
from negminer.pipeline import loss_inputs


def exact_gradient(q: torch.Tensor, E: torch.Tensor, pos_rows: torch.Tensor, excl, scale: float) -> torch.Tensor:
    """d/dq of mean_i [ -s_pos + logsumexp(s_pos, s_negatives) ] over all N targets (``excl``: Exclusions)."""
    q = q.detach().clone().requires_grad_(True)
    SoftmaxLoss()(q, E[pos_rows], scale, pool=E, pool_mask=excl.dense(None)).backward()
    return q.grad


def sampler_gradient(q, E, batch, draw, scale: float, inbatch: bool, loss_name: str, log_batch_count=None) -> torch.Tensor:
    """d/dq of the training loss with the sampler's draw, every embedding fresh (``E``)."""
    q = q.detach().clone().requires_grad_(True)
    neg = E[draw.ids].masked_fill(draw.mask.unsqueeze(-1), 0.0) if draw.ids.numel() else None
    loss = build_loss(loss_name)
    loss(**loss_inputs(loss, q, E[batch.pos_rows], scale, batch, draw, neg, inbatch, log_batch_count)).backward()
    return q.grad


def diagnose(q, E, batch, sampler, store, inbatch: bool = True, loss_name: str = "softmax", log_batch_count=None) -> dict:
    """Diagnostics of ``sampler`` on one batch; ``q`` [B, d] and ``E`` [N, d] are fresh embeddings."""
    from negminer.pipeline import inbatch_mask
    from negminer.types import Draw

    scale = batch.loss_scale
    n = len(E)
    logp = ((q @ E.T) * scale).masked_fill(batch.excl.dense(None), -math.inf).log_softmax(-1)
    p = logp.exp()
    if sampler.k:
        logq = sampler.proposal(q, batch, store).clamp(min=-69.0)  # floor 1e-30
        draw = sampler.sample(q, batch, store)
    else:  # in-batch: a uniform proposal over the batch's other (usable) positives
        use = (~inbatch_mask(batch.pos_rows, batch.excl)).float()
        Q = torch.zeros(len(q), n).index_add_(1, batch.pos_rows, use)
        logq = (Q / Q.sum(1, keepdim=True).clamp(min=1)).clamp(min=1e-30).log()
        draw = Draw.empty(len(q))
    Q = logq.exp()
    out = {"tv": float(0.5 * (p - Q).abs().sum(1).mean()),
           "kl": float(torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(1).mean())}
    top = logp.topk(10, dim=1).indices
    found = []
    for i in range(len(q)):
        drawn = set(draw.ids[i][~draw.mask[i]].tolist())
        if inbatch:
            drawn |= {int(r) for j, r in enumerate(batch.pos_rows.tolist()) if j != i}
        found.append(len(drawn & set(top[i].tolist())) / 10)
    out["top10_found"] = sum(found) / len(found)
    g_star = exact_gradient(q, E, batch.pos_rows, batch.excl, scale)
    g = sampler_gradient(q, E, batch, draw, scale, inbatch, loss_name, log_batch_count)
    out["grad_rel_error"] = float((g - g_star).norm() / g_star.norm().clamp(min=1e-12))
    out["grad_cosine"] = float(torch.nn.functional.cosine_similarity(g.flatten(), g_star.flatten(), dim=0))
    return out


@torch.no_grad()
def diagnose_trainer(trainer, step: int) -> dict:
    """Diagnostics on the batch of ``step`` (the store is read, not changed)."""
    idx, pos_rows = trainer.batch_rows(step)
    m = trainer.model
    E = (trainer.store.embed(range(trainer.store.n), m, batch_size=trainer.cfg.eval_batch_size)
         if trainer.store is not None else m.encode_targets(trainer.target_inputs, batch_size=trainer.cfg.eval_batch_size))
    q = m.encode_queries([trainer.query_texts[i] for i in idx])
    batch = trainer.make_batch(step, idx, pos_rows, E[torch.as_tensor(pos_rows)])
    with torch.enable_grad():
        d = diagnose(q, E, batch, trainer.sampler, trainer.store, trainer.cfg.inbatch, trainer.cfg.loss,
                     trainer.batcher.log_batch_count)
    if trainer.store is not None:
        d.update(staleness(trainer.store.embeddings(), E, q, batch.loss_scale))
    return {k: round(v, 6) for k, v in d.items()}


def staleness(cached: torch.Tensor, fresh: torch.Tensor, q: torch.Tensor, scale: float) -> dict:
    """How far the whole store is from the current tower: mean ||cached - fresh||^2 / ||fresh||^2 over
    rows (``store_staleness``, as the refreshers log it for the rows they touch) and the mean absolute
    logit error |<q, cached> - <q, fresh>| * scale over the batch's queries and all rows (``stale_logit``, nats)."""
    from negminer.refreshers.base import relative_change

    cached, fresh, q = cached.float(), fresh.float(), q.float()
    return {"store_staleness": relative_change(cached, fresh),
            "stale_logit": float(((q @ (cached - fresh).T) * scale).abs().mean())}


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
        tr = Trainer(cfg, hooks=[])
        if tr.store is None:
            tr.store = tr.make_store(resume=False)
        tr.setup_sampler()
        rows = [diagnose_trainer(tr, s) for s in range(args.batches)]
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    print(f"sampler {cfg.negatives} (k={cfg.num_negatives}, inbatch={cfg.inbatch}) on {tr.dataset.name}, "
          f"{args.batches} batches of {cfg.batch_size}")
    for k, v in mean.items():
        print(f"  {k:<16}{v:>10.4f}")
    return 0
