"""One training step, for every memory strategy (plain, accumulation, GradCache, ContAccum) and every sampler
(all targets included), in GradCache's functional shape:

    for each micro-batch of the step (memory/):
        embed queries and positives (pipeline/encoding.py: with a graph, or cached leaves)
        draw negatives (samplers/), embed the drawn rows (or read them from the store: --negative-grad none)
        assemble the loss inputs (pipeline/assemble.py; the memory strategy may extend them: ContAccum's bank)
        loss, backward into the embeddings, then through the cached chunks
    optimiser step (the trainer's: clipping, divergence, torchrun's all-reduce)
    refreshers and the sampler's bookkeeping (Trainer.update_store)

``train_step`` returns a ``StepResult`` (None when the step was skipped: --on-nan skip).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from negminer.pipeline.assemble import all_inputs, first_occurrence, loss_inputs
from negminer.types import Batch, Draw


@dataclass
class StepResult:
    loss: float                          # the step's loss (mean over micro-batches)
    batch: Batch                         # the whole step's batch
    draw: Draw                           # the micro-batches' draws, stacked
    pos_emb: torch.Tensor                # [B, d] the positives' training-forward embeddings (detached)
    drawn: torch.Tensor | None = None    # distinct drawn rows encoded with gradient
    drawn_emb: torch.Tensor | None = None  # their embeddings (detached)
    cached: torch.Tensor | None = None   # distinct drawn rows read from the store (--negative-grad none)


def train_step(tr, step: int) -> StepResult | None:
    """One optimiser step of the trainer ``tr`` (the composed parts: batcher, encoding, sampler, store, memory,
    loss, optimiser, refreshers)."""
    with tr.phases("batching"):
        tr.batcher.prepare(step, tr.encode_training_queries, tr.dist)
    torch.manual_seed(tr.cfg.seed * 1_000_003 + step + 7_777_777 * tr.dist.rank)  # dropout: (step, rank)
    idx, pos_rows = tr.batch_rows(step)
    mem = tr.memory
    micro = mem.micro_batches(idx, pos_rows)
    parts, total = [], 0.0
    for j, (mi, mp) in enumerate(micro):
        plain = not (mem.cached or tr.sampler.all_targets)  # GradCache's first pass has no gradient
        with tr.cast_scope() if plain else nullcontext():
            q, batch, kw, embedded, p_emb, draw, piece = _forward(tr, step, j, len(micro), mi, mp)
        with tr.phases("loss_backward"):
            loss = tr.loss_fn(**kw)
            if not torch.isfinite(loss):
                tr.diverged(f"the loss is {float(loss.detach())}", step)
                return None
            if j == 0:
                tr.optimizer.zero_grad(set_to_none=True)
            (loss / len(micro) if len(micro) > 1 else loss).backward()
        for e in embedded:  # cached leaves: re-encode chunk by chunk, push their gradient (no-op with a graph)
            e.backward()
        if not tr.sampler.all_targets:
            mem.after_micro(step, q=q.emb.detach(), p=p_emb.detach(), pos_rows=mp, idx=mi,
                            drawn_emb=piece.get("emb"), drawn_rows=piece.get("rows"),
                            exclude=[tr.exclude(int(i)) for i in mi], positives=[tr.pos_sets[int(i)] for i in mi])
        total += float(loss.detach()) / len(micro)
        parts.append((batch, draw, p_emb.detach(), piece))
    if not tr.optimizer_step(step, total):
        return None
    result = _merge(tr, step, idx, pos_rows, parts, total)
    tr.update_store(step, result)
    return result


def _forward(tr, step: int, j: int, n_micro: int, mi, mp):
    """Micro-batch j's embeddings (with a graph, or cached leaves), its draw and the loss inputs."""
    mem, enc = tr.memory, tr.encoding
    q = enc.queries(mi, cached=mem.cached)
    tr.batcher.record(mi, q.emb)
    if tr.sampler.all_targets:
        e = enc.all_targets(tr.dataset.num_targets, tr.cfg.chunk_size or tr.cfg.eval_batch_size)
        batch = tr.make_batch(step, mi, mp, e.emb[torch.as_tensor(mp)])
        kw = all_inputs(tr.loss_fn, q.emb, tr.model.logit_scale(), batch, e.emb)
        return q, batch, kw, [q, e], e.emb[torch.as_tensor(mp)], Draw.empty(len(mi)), {}
    p = enc.targets(mp, cached=mem.cached, phase="target_encode_pos")
    batch = tr.make_batch(step, mi, mp, p.emb, j if n_micro > 1 else 0)
    with tr.phases("sample"):
        draw = tr.sampler.sample(q.emb.detach(), batch, tr.store) if tr.sampler.k else Draw.empty(len(mi))
    neg, n, piece = _negatives(tr, draw, q.emb.device, mem.cached)
    b = len(mi)
    with tr.phases("loss_backward"):
        kw = loss_inputs(tr.loss_fn, q.emb, p.emb, tr.model.logit_scale(), batch, draw, neg, tr.cfg.inbatch,
                         lambda rows, queries=None: tr.batcher.log_batch_count(rows, queries, size=b),
                         share=tr.cfg.share_negatives)
        kw = mem.extend(kw, batch, tr.dataset.num_targets)
    return q, batch, kw, [q, p] + ([n] if n is not None else []), p.emb, draw, piece


def _negatives(tr, draw: Draw, device, cached: bool):
    """[B, k, d] embeddings of the drawn rows (each distinct usable row encoded once; masked slots zero), the
    Embedded to backpropagate (None when read from the store), and what the refreshers and the bank need."""
    if not draw.ids.numel() or not bool((~draw.mask).any()):
        return None, None, {}
    ok = ~draw.mask
    if tr.cfg.negative_grad == "none":  # the store's (stale) embeddings: no target-tower work
        with tr.phases("sample"):
            rows = draw.ids[ok].unique()
            emb = tr.store.embeddings(draw.ids.reshape(-1)).view(*draw.ids.shape, -1)
            neg = emb.masked_fill(draw.mask.unsqueeze(-1), 0.0).to(device)
        return neg, None, {"cached": rows, "rows": rows, "emb": tr.store.embeddings(rows).to(device)}
    uniq, inv = draw.ids[ok].unique(return_inverse=True)
    n = tr.encoding.targets(uniq, cached=cached, phase="target_encode_neg")
    neg = n.emb.new_zeros(*draw.ids.shape, n.emb.shape[-1])
    neg[ok.to(neg.device)] = n.emb[inv.to(n.emb.device)]
    return neg, n, {"rows": uniq, "emb": n.emb.detach()}


def _merge(tr, step: int, idx, pos_rows, parts, loss: float) -> StepResult:
    """The micro-batches' pieces as one step's (for the refreshers)."""
    def cat(key):
        xs = [pc[key] for _, _, _, pc in parts if pc.get(key) is not None]
        return torch.cat(xs) if xs else None

    p = torch.cat([x[2] for x in parts])
    batch = parts[0][0] if len(parts) == 1 else tr.make_batch(step, idx, pos_rows, p)
    draws = [x[1] for x in parts]
    draw = draws[0] if len(parts) == 1 else Draw(torch.cat([d.ids for d in draws]), torch.cat([d.mask for d in draws]))
    rows, emb, cached = cat("rows"), cat("emb"), cat("cached")
    if len(parts) > 1 and rows is not None:  # a row drawn in two micro-batches is one row of the step
        keep = first_occurrence(rows)
        rows, emb = rows[keep], emb[keep.to(emb.device)]
        cached = None if cached is None else rows
    return StepResult(loss, batch, draw, p, None if cached is not None else rows,
                      None if cached is not None else emb, cached)
