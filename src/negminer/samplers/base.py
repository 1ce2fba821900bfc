"""What a sampler sees (Batch) and returns (Draw), and the masking every sampler applies."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Batch:
    step: int
    pos_rows: torch.Tensor           # [B] target row of each query's positive this step
    exclude: list                    # per query: set of rows never to use as negatives (positives, duplicates)
    pos_emb: torch.Tensor            # [B, d] fresh positive embeddings, detached
    generator: torch.Generator       # seeded from (seed, step)
    loss_scale: float                # 1 / loss temperature


@dataclass
class Draw:
    ids: torch.Tensor                # [B, k] target rows
    log_q: torch.Tensor | None       # [B, k] log proposal probabilities (None: no correction)
    mask: torch.Tensor               # [B, k] True = not a usable negative
    log_z: torch.Tensor | None = None  # [B] logsumexp of stale negative scores x loss scale (cache surrogate)

    @staticmethod
    def empty(b: int) -> "Draw":
        return Draw(torch.zeros(b, 0, dtype=torch.long), None, torch.zeros(b, 0, dtype=torch.bool))


def excluded(candidates: torch.Tensor | None, batch: Batch, n: int) -> torch.Tensor:
    """[B, M] bool: candidate j is a positive (or duplicate of one) of query i. ``candidates``: rows
    [M] shared by all queries, rows [B, M] per query, or None (all n rows)."""
    b = len(batch.exclude)
    if candidates is not None and candidates.dim() == 2:
        mask = torch.zeros(candidates.shape, dtype=torch.bool)
        for i, ex in enumerate(batch.exclude):
            if ex:
                mask[i] = torch.isin(candidates[i], torch.as_tensor(sorted(ex), dtype=torch.long))
        return mask
    if candidates is None:
        mask = torch.zeros(b, n, dtype=torch.bool)
        for i, ex in enumerate(batch.exclude):
            mask[i, torch.as_tensor(sorted(ex), dtype=torch.long)] = True
        return mask
    pos_of = {}
    for j, r in enumerate(candidates.tolist()):
        pos_of.setdefault(r, []).append(j)
    mask = torch.zeros(b, len(candidates), dtype=torch.bool)
    for i, ex in enumerate(batch.exclude):
        for r in ex:
            for j in pos_of.get(r, ()):
                mask[i, j] = True
    return mask


def margin_mask(scores: torch.Tensor, q: torch.Tensor, batch: Batch, margin: float | None) -> torch.Tensor:
    """True where a candidate scores above (positive - margin): likely an unlabelled positive."""
    if margin is None:
        return torch.zeros_like(scores, dtype=torch.bool)
    s_pos = (q * batch.pos_emb).sum(-1, keepdim=True)
    return scores > s_pos - margin


class Sampler:
    """Base: ``sample`` proposes negatives; ``update`` sees the fresh embeddings after the step."""

    name = "base"
    k = 0

    def __init__(self, k: int = 0, margin: float | None = None, sample_temperature: float | None = None,
                 replacement: bool = False):
        self.k, self.margin, self.sample_temperature, self.replacement = k, margin, sample_temperature, replacement
        self.last_stats: dict = {}

    def setup(self, store, model, step: int) -> None:
        """Called once before training (and after resume): build caches and indexes."""

    def sample(self, q: torch.Tensor, batch: Batch, store) -> Draw:
        raise NotImplementedError

    def update(self, batch: Batch, draw: Draw, fresh: torch.Tensor | None, model, store, step: int) -> None:
        """After the optimiser step: ``fresh`` [B, k, d] are the drawn targets' encodings (detached)."""

    def proposal(self, q: torch.Tensor, batch: Batch, store) -> torch.Tensor:
        """log Q [B, N] over all targets (diagnostics; small N only). Excluded rows get -inf."""
        raise NotImplementedError

    # state for checkpoints: tensors and JSON
    def state(self) -> tuple[dict, dict]:
        return {}, {}

    def load_state(self, tensors: dict, meta: dict) -> None:
        pass

    def scale(self, batch: Batch) -> float:
        return 1.0 / self.sample_temperature if self.sample_temperature else batch.loss_scale


def scored_draw(sampler: Sampler, q: torch.Tensor, cand: torch.Tensor | None, scores: torch.Tensor, batch: Batch,
                n: int) -> Draw:
    """Gumbel draws from softmax(scores / tau_sample) over candidates: rows [M] shared by all queries,
    None (all n rows), or rows [B, M] per query; ``scores`` [B, M] = q . e (-inf: no candidate)."""
    from negminer.samplers.gumbel import gumbel_topk

    bad = excluded(cand, batch, n) | margin_mask(scores, q, batch, sampler.margin) | torch.isneginf(scores)
    logits = (scores * sampler.scale(batch)).masked_fill(bad, -math.inf)
    usable = int((~bad).sum(1).min())
    k = min(sampler.k, usable) if not sampler.replacement else sampler.k
    if k == 0 or usable == 0:
        return Draw.empty(len(q))
    idx = gumbel_topk(logits, k, batch.generator, replacement=sampler.replacement)
    log_q = logits.log_softmax(-1).gather(1, idx)
    ids = idx if cand is None else cand[idx] if cand.dim() == 1 else cand.gather(1, idx)
    log_z = (scores * batch.loss_scale).masked_fill(bad, -math.inf).logsumexp(-1)
    return Draw(ids, log_q, torch.zeros_like(ids, dtype=torch.bool), log_z)


def write_back(store, batch: Batch, draw: Draw, fresh: torch.Tensor | None, step: int) -> dict:
    """Store the fresh embeddings of drawn targets and positives (encoded during step-1, at no extra
    cost); returns the staleness and age the drawn rows had before."""
    stats = {}
    if fresh is not None and draw.ids.numel():
        ids = draw.ids.flatten()
        f = fresh.reshape(-1, fresh.shape[-1])
        stats["staleness"] = store.staleness(ids, f)
        stats["drawn_age"] = float((step - 1 - store.age[ids]).float().mean())
        store.write(ids, f, step - 1)
    store.write(batch.pos_rows, batch.pos_emb, step - 1)
    return stats
