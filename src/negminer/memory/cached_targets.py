"""Every target as a negative with bounded memory: encode in chunks without gradient, take the loss's
gradient with respect to the embeddings, then re-encode chunk by chunk and backpropagate it.

Gao, Zhang, Han, Callan, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"
(GradCache), RepL4NLP 2021; used for all-label negatives by DEXML (Gupta et al., ICLR 2024).

For a loss L(E) of the target embeddings E = g_theta(x_1..x_N),
    dL/dtheta = sum_c (dE_c/dtheta)^T (dL/dE_c),
so each chunk c is re-encoded with gradient and ``E_c.backward(dL/dE_c)``; only one chunk's graph
lives at a time. Each chunk's first pass runs under a recorded RNG state that its second pass
replays, so dropout masks agree and the gradient is the plain full-batch one. Every target is
encoded twice per step (both passes are counted).

    enc = encode_cached(lambda rows: tower(feats(rows)), n, chunk=256)
    loss = loss_fn(q, enc.emb[pos_rows], scale, pool=enc.emb, ...)
    loss.backward()          # into the query tower and enc.emb.grad
    enc.backward()           # into the target tower, chunk by chunk
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class CachedEncoding:
    emb: torch.Tensor                      # [N, d] leaf that requires grad (no graph behind it)
    encode: Callable[[torch.Tensor], torch.Tensor]
    chunks: list                           # (rows, cpu RNG state, cuda RNG states)
    passes: int = 1                        # encoder passes over all rows so far
    params: list | None = None             # parameters whose sparse gradients are densified per chunk

    def backward(self) -> None:
        """Re-encode each chunk with gradient and push the cached dL/dE through it."""
        grad = self.emb.grad if self.chunks else None
        if grad is None:
            return
        for rows, cpu, cuda in self.chunks:
            g = grad[rows]
            if not bool(g.any()):
                continue
            with torch.random.fork_rng(devices=list(range(len(cuda)))):
                torch.set_rng_state(cpu)
                if cuda:
                    torch.cuda.set_rng_state_all(cuda)
                out = self.encode(rows)
            out.backward(g.to(out.dtype))
            for p in self.params or ():  # embedding bags: sparse chunk gradients would pile up (N x tokens x d)
                if p.grad is not None and p.grad.is_sparse:
                    p.grad = p.grad.to_dense()
        self.passes += 1


def encode_cached(encode: Callable[[torch.Tensor], torch.Tensor], n: int, chunk: int, params=None,
                  share: slice | None = None, gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  dim: int = 0) -> CachedEncoding:
    """First pass: ``encode(rows) -> [len(rows), d]`` on chunks of ``chunk`` rows, without gradient.
    Under torchrun a rank encodes rows ``share`` (and later backpropagates only those) and ``gather``
    ([len(share), d] -> [n, d]) joins the ranks' embeddings."""
    parts, chunks = [], []
    cuda_on = torch.cuda.is_available() and torch.cuda.is_initialized()
    share = share or slice(0, n)
    for s in range(share.start, share.stop, chunk):
        rows = torch.arange(s, min(share.stop, s + chunk))
        cpu = torch.get_rng_state()
        cuda = torch.cuda.get_rng_state_all() if cuda_on else []
        with torch.no_grad():
            parts.append(encode(rows).float())
        chunks.append((rows, cpu, cuda))
    emb = torch.cat(parts) if parts else torch.zeros(0, dim)
    if gather is not None:
        with torch.no_grad():
            emb = gather(emb)
    emb = emb.detach().requires_grad_(True)
    return CachedEncoding(emb, encode, chunks, params=list(params) if params is not None else None)


def batch_norm_layers(module: torch.nn.Module) -> list[str]:
    """Names of the batch-norm layers in ``module``: chunked encoding (GradCache, all targets) cannot keep
    their statistics those of the whole batch, so the trainer refuses such towers with these memory strategies."""
    return [name or type(m).__name__ for name, m in module.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
