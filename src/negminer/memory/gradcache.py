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

from negminer.memory.cached_targets import encode_cached


def gradcache_step(tr, step: int, idx, pos_rows) -> float:
    """One optimiser step of Trainer ``tr`` with cached embedding gradients; returns the loss. Under torchrun
    each rank caches its share of every set of rows and gathers the leaves (dist.py): the loss's backward
    leaves each rank the gradient of its own rows, and the parameter all-reduce waits for the last chunk."""
    m, ph, d = tr.model, tr.phases, tr.dist
    chunk = tr.cfg.chunk_size or 32
    params = list(m.parameters())
    texts = [tr.query_texts[i] for i in idx[d.share(len(idx))]]
    pos_t = torch.as_tensor(pos_rows, dtype=torch.long)

    def enc_q(rows):
        with tr.autocast():
            return m.embed_queries(m.tokenize_queries([texts[r] for r in rows.tolist()]))

    encodings = {}  # name -> (this rank's cached encoding, rows over all ranks)

    def cached(name, encode, n):  # the first pass over this rank's share of n rows, kept for the second
        mine = d.share(n)
        enc = encode_cached(encode, mine.stop - mine.start, chunk, params)
        encodings[name] = (enc, n)
        return d.gather(enc.emb, n)

    def cached_rows(name, source):
        mine = source[d.share(len(source))]
        return cached(name, lambda rows: tr.embed_target_rows_local(mine[rows]), len(source))

    with ph("query_encode"):
        q = cached("query_encode", enc_q, len(idx))
    with ph("target_encode_pos"):
        p = cached_rows("target_encode_pos", pos_t)
    tr.counters.query_encodes += len(idx)
    tr.counters.target_encodes += len(pos_t)
    tr.batcher.record(idx, q)
    loss, parts = tr.negatives_and_loss(step, idx, pos_rows, q, p, lambda rows: cached_rows("target_encode_neg", rows))
    if parts is None:
        return loss
    for name, (c, _) in encodings.items():  # second pass: re-encode with a graph, push the cached gradient
        with ph(name):
            c.backward()
    tr.counters.query_encodes += len(idx)
    tr.counters.target_encodes += sum(n for name, (_, n) in encodings.items() if name != "query_encode")
    if not tr.optimizer_step(step):
        return math.nan
    tr.update_store(step, *parts)
    return loss
