"""Top-k search by inner product: exact (chunked matrix products, bounded memory) or FAISS.

Both return ``(scores [n_q, k], indices [n_q, k])``, best first, with ``k`` capped at the number
of targets. Equal scores come out in whatever order ``torch.topk`` / FAISS gives them (and which
of those tied at the k-th score are kept is theirs to pick); ``evaluate`` re-sorts each query's
list into trec_eval's order (``metrics.trec_order``).
"""

from __future__ import annotations

import torch

from negminer.errors import ConfigError

BACKENDS = ("exact", "faiss")


def exact_topk(queries: torch.Tensor, targets: torch.Tensor, k: int, query_chunk: int = 1024,
               target_chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k; peak memory is about query_chunk x (target_chunk + k) scores.

    Each target chunk's top-k is merged with the running best k by a second ``topk``.
    """
    queries, targets = torch.as_tensor(queries), torch.as_tensor(targets)
    targets = targets.to(device=queries.device, dtype=queries.dtype)
    k = max(0, min(k, targets.shape[0]))
    all_s, all_i = [], []
    for qs in range(0, queries.shape[0], query_chunk):
        q = queries[qs:qs + query_chunk]
        best_s = torch.empty((q.shape[0], 0), dtype=q.dtype, device=q.device)
        best_i = torch.empty((q.shape[0], 0), dtype=torch.long, device=q.device)
        for ts in range(0, targets.shape[0], target_chunk):
            s = q @ targets[ts:ts + target_chunk].T
            cs, ci = s.topk(min(k, s.shape[1]), dim=1)
            merged_s, merged_i = torch.cat([best_s, cs], 1), torch.cat([best_i, ci + ts], 1)
            best_s, pos = merged_s.topk(min(k, merged_s.shape[1]), dim=1)
            best_i = merged_i.gather(1, pos)
        all_s.append(best_s)
        all_i.append(best_i)
    if not all_s:  # no queries
        return torch.empty((0, k), dtype=queries.dtype), torch.empty((0, k), dtype=torch.long)
    return torch.cat(all_s), torch.cat(all_i)


def faiss_topk(queries: torch.Tensor, targets: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inner-product search with a FAISS IndexFlatIP (float32, CPU)."""
    try:
        import faiss
    except ImportError:
        raise ConfigError("backend 'faiss' needs the faiss package (pip install faiss-cpu), "
                          "or use backend 'exact'") from None
    t = torch.as_tensor(targets).detach().float().cpu().contiguous().numpy()
    q = torch.as_tensor(queries).detach().float().cpu().contiguous().numpy()
    index = faiss.IndexFlatIP(t.shape[1])
    index.add(t)
    s, i = index.search(q, max(0, min(k, t.shape[0])))
    return torch.from_numpy(s), torch.from_numpy(i).long()


def topk(queries, targets, k: int, backend: str = "exact"):
    """Dispatch to ``exact_topk`` or ``faiss_topk``; ConfigError for any other backend."""
    if backend == "exact":
        return exact_topk(queries, targets, k)
    if backend == "faiss":
        return faiss_topk(queries, targets, k)
    raise ConfigError(f"unknown search backend {backend!r} (choose from {', '.join(BACKENDS)})")
