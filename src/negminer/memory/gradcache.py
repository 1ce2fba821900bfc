"""GradCache: the gradient of a large batch in the memory of one chunk.

Gao, Zhang, Han, Callan, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup",
RepL4NLP 2021. A contrastive loss couples every embedding of the batch, so the batch cannot simply be
split; but its gradient factors through the embeddings,
    dL/dtheta = sum_x (d e_x / d theta)^T dL/de_x,
so: (1) encode queries, positives and drawn negatives chunk by chunk without a graph (recording each
chunk's RNG state); (2) compute the loss on those embeddings as leaves and backpropagate to them only;
(3) re-encode each chunk with a graph under its replayed RNG state (same dropout masks) and push its
cached dL/de through the tower. Parameter gradients equal the plain full batch's with the masks of
the first pass; only one chunk's activations are alive at a time. Each row is encoded twice (both
passes counted in query_encodes / target_encodes).

    negminer train --memory gradcache --chunk-size 16 --batch-size 512 ...
"""

from __future__ import annotations

import math

import torch

from negminer.losses import loss_inputs
from negminer.memory.cached_targets import encode_cached
from negminer.samplers import Draw


def gradcache_step(tr, step: int, idx, pos_rows) -> float:
    """One optimiser step of Trainer ``tr`` with cached embedding gradients; returns the loss."""
    m, ph, cfg = tr.model, tr.phases, tr.cfg
    chunk = cfg.chunk_size or 32
    params = list(m.parameters())
    texts = [tr.query_texts[i] for i in idx]
    pos_t = torch.as_tensor(pos_rows, dtype=torch.long)

    def enc_q(rows):
        with tr.autocast():
            return m.embed_queries(m.tokenize_queries([texts[r] for r in rows.tolist()]))

    def enc_targets(source):
        def enc(rows):
            with tr.autocast():
                return m.embed_targets(tr.target_features(source[rows]))
        return enc

    with ph("query_encode"):
        qc = encode_cached(enc_q, len(idx), chunk, params)
    with ph("target_encode_pos"):
        pc = encode_cached(enc_targets(pos_t), len(pos_t), chunk, params)
    tr.counters.query_encodes += len(idx)
    tr.counters.target_encodes += len(pos_t)
    tr.batcher.record(idx, qc.emb)
    q, p = qc.emb, pc.emb
    with ph("sample"):
        batch = tr.make_batch(step, idx, pos_rows, p)
        draw = tr.sampler.sample(q.detach(), batch, tr.store) if tr.sampler.k else Draw.empty(len(idx))
    neg = uniq = fresh = cached = nc = None
    if draw.ids.numel() and bool((~draw.mask).any()):
        if cfg.negative_grad == "none":
            with ph("sample"):
                neg, cached = tr.cached_negatives(draw, q.device)
        else:
            ok = ~draw.mask
            uniq, inv = draw.ids[ok].unique(return_inverse=True)
            with ph("target_encode_neg"):
                nc = encode_cached(enc_targets(uniq), len(uniq), chunk, params)
            tr.counters.target_encodes += len(uniq)
            fresh = nc.emb
            neg = fresh.new_zeros(*draw.ids.shape, fresh.shape[-1])
            neg[ok] = fresh[inv]
    with ph("loss_backward"):
        kw = loss_inputs(tr.loss_fn, q, p, m.logit_scale(), batch, draw, neg, cfg.inbatch,
                         tr.batcher.log_batch_count, share=cfg.share_negatives)
        loss = tr.loss_fn(**kw)
        if not torch.isfinite(loss):
            return tr._diverged("the loss", loss.detach(), step)
        tr.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # to the cached embeddings (and a learned temperature)
    for name, c in (("query_encode", qc), ("target_encode_pos", pc), ("target_encode_neg", nc)):
        if c is not None:
            with ph(name):
                c.backward()
    tr.counters.query_encodes += len(idx)
    tr.counters.target_encodes += len(pos_t) + (len(uniq) if nc is not None else 0)
    if not tr.optimizer_step(step):
        return math.nan
    tr.update_store(step, batch, draw, p, uniq, fresh, cached)
    return float(loss.detach())
