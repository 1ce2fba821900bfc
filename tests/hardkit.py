"""Hard inputs for combination tests: topic-clustered targets (a batch's positives are each other's hard
negatives), several positives per query, duplicate texts, stale embeddings that differ from fresh ones, and
sizes that divide nothing (701 targets, 203 queries, batches of 24, clusters of 8 or 12)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from negminer.audit import Setup, audit_draws
from negminer.batching import NgameBatcher, RandomBatcher
from negminer.losses import build_loss
from negminer.samplers import CacheSampler, build_sampler
from negminer.store import TargetStore
from negminer.types import Batch, Exclusions


@dataclass
class Problem:
    fresh: torch.Tensor                  # [N, d] what the current tower gives
    stale: torch.Tensor                  # [N, d] what the store holds
    queries: torch.Tensor                # [n, d]
    positives: list[list[int]]           # per query, 1-3 rows of its topic
    dups: dict[int, set[int]]            # row -> the other rows with the same text
    topic_of_query: np.ndarray = field(default=None)

    def exclude(self, i: int) -> set[int]:
        out = set(self.positives[i])
        for r in self.positives[i]:
            out |= self.dups.get(r, set())
        return out


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def hard_problem(n_targets: int = 701, n_queries: int = 203, d: int = 16, topics: int = 11, drift: float = 0.06,
                 spread: float = 0.45, query_noise: float = 0.5, seed: int = 0) -> Problem:
    """Every 37th target has the next one's text; every 10th query repeats the one before it (text, positives)."""
    g = torch.Generator().manual_seed(seed)
    centre = unit(torch.randn(topics, d, generator=g))
    t_topic = torch.randint(topics, (n_targets,), generator=g)
    fresh = unit(centre[t_topic] + spread * torch.randn(n_targets, d, generator=g))
    dups: dict[int, set[int]] = {}
    for j in range(0, n_targets - 1, 37):  # every 37th target has the text of the next one
        fresh[j] = fresh[j + 1]
        dups.setdefault(j, set()).add(j + 1)
        dups.setdefault(j + 1, set()).add(j)
    stale = unit(fresh + drift * torch.randn(n_targets, d, generator=g))
    for j in range(0, n_targets - 1, 37):  # one text, one stored value
        stale[j] = stale[j + 1]
    rng = np.random.default_rng(seed)
    q_topic = rng.integers(topics, size=n_queries)
    positives, queries = [], []
    for i, t in enumerate(q_topic):
        if i % 10 == 9:  # a repeated query
            q_topic[i] = q_topic[i - 1]
            positives.append(list(positives[-1]))
            queries.append(queries[-1].clone())
            continue
        members = (t_topic == int(t)).nonzero().flatten().numpy()
        pos = sorted(int(x) for x in rng.choice(members, size=int(rng.integers(1, 4)), replace=False))
        positives.append(pos)
        queries.append(unit(fresh[pos].mean(0) + query_noise * torch.randn(d, generator=g)))
    return Problem(fresh, stale, torch.stack(queries), positives, dups, q_topic)


def store_of(e: torch.Tensor) -> TargetStore:
    n, d = e.shape
    store = TargetStore([str(i) for i in range(n)], [str(i) for i in range(n)], d)
    store.write(torch.arange(n), e, 0)
    return store


def setup_of(pb: Problem, sampler, loss: str = "softmax", batch: int = 24, batching: str = "random",
             cluster: int = 8, inbatch: bool = True, share: bool = False, accumulation: int = 1, scale: float = 20.0,
             negative_grad: str = "target", seed: int = 0) -> Setup:
    n, N = len(pb.queries), len(pb.fresh)
    if batching == "ngame":
        bt = NgameBatcher(n, batch, seed, pb.positives, N, cluster_size=cluster)
        bt.prepare(0, lambda idx: pb.queries[torch.as_tensor(idx)])
    else:
        bt = RandomBatcher(n, batch, seed, pb.positives, N)
    lf = build_loss(loss)
    store = store_of(pb.stale)
    sampler.want_log_z = "log_z" in lf.needs
    if hasattr(sampler, "setup") and sampler.k:
        sampler.setup(store, None, 0, encode=lambda rows, step: None)
    if getattr(bt, "labels", None) is not None:
        bt.batch(0)  # the layout's groups, for the counts

    def make_batch(step, idx, pos_rows, pos_emb, micro=0):
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, micro, 41]).generate_state(1)[0]))
        return Batch(step, torch.as_tensor(pos_rows, dtype=torch.long), Exclusions([pb.exclude(int(i)) for i in idx], N),
                     pos_emb.detach(), g, scale, queries=torch.as_tensor(np.asarray(idx), dtype=torch.long),
                     positives=Exclusions([set(pb.positives[int(i)]) for i in idx], N))
    return Setup(sampler, store, bt, lf, make_batch, pb.positives, pb.exclude, inbatch, share, accumulation,
                 negative_grad)


def run_audit(pb: Problem, setup: Setup, draws: int, anchors=None, seed: int = 0) -> dict:
    anchors = list(range(0, len(pb.queries), 9)) if anchors is None else anchors
    return audit_draws(setup, lambda idx: pb.queries[torch.as_tensor(np.asarray(idx), dtype=torch.long)], pb.fresh,
                       anchors, draws, seed=seed)


def cache(k: int = 8, **kw) -> CacheSampler:
    s = CacheSampler(k, **kw)
    return s


def sampler_named(name: str, k: int = 8, **opts):
    """A sampler as the CLI builds it (``opts``: TrainConfig fields)."""
    from negminer.config import TrainConfig

    cfg = TrainConfig(negatives=name, num_negatives=k, **opts)
    s = build_sampler(cfg, replacement=cfg.replacement)
    s.shared = cfg.share_negatives
    return s
