"""Top-k search by inner product: exact (chunked matrix products, bounded memory) or FAISS."""

from __future__ import annotations

import torch

from negminer.errors import ConfigError


def exact_topk(queries: torch.Tensor, targets: torch.Tensor, k: int, query_chunk: int = 1024,
               target_chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [n_q, k], indices [n_q, k]), best first. Memory: query_chunk x (target_chunk + k)."""
    k = min(k, targets.shape[0])
    all_s, all_i = [], []
    for qs in range(0, queries.shape[0], query_chunk):
        q = queries[qs:qs + query_chunk]
        best_s = torch.full((q.shape[0], 0), float("-inf"))
        best_i = torch.zeros((q.shape[0], 0), dtype=torch.long)
        for ts in range(0, targets.shape[0], target_chunk):
            s = q @ targets[ts:ts + target_chunk].T
            ks = min(k, s.shape[1])
            cs, ci = s.topk(ks, dim=1)
            merged_s = torch.cat([best_s, cs], 1)
            merged_i = torch.cat([best_i, ci + ts], 1)
            top_s, pos = merged_s.topk(min(k, merged_s.shape[1]), dim=1)
            best_s, best_i = top_s, merged_i.gather(1, pos)
        all_s.append(best_s), all_i.append(best_i)
    return torch.cat(all_s), torch.cat(all_i)


def faiss_topk(queries: torch.Tensor, targets: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        import faiss
    except ModuleNotFoundError:
        raise ConfigError("--backend faiss needs faiss (pip install faiss-cpu)") from None
    index = faiss.IndexFlatIP(targets.shape[1])
    index.add(targets.float().contiguous().numpy())
    s, i = index.search(queries.float().contiguous().numpy(), min(k, targets.shape[0]))
    return torch.from_numpy(s), torch.from_numpy(i).long()


def topk(queries, targets, k: int, backend: str = "exact"):
    if backend == "exact":
        return exact_topk(queries, targets, k)
    if backend == "faiss":
        return faiss_topk(queries, targets, k)
    raise ConfigError(f"unknown search backend {backend!r}: exact or faiss")
