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

from negminer.memory.base import Memory


class GradCache(Memory):
    """One micro-batch; queries, positives and drawn negatives encoded as cached leaves (pipeline/encoding.py)."""

    name = "gradcache"
    cached = True
