"""The conformance grid: every combination of sampler x in-batch x shared x margin x replacement x batching x
memory that the rule table (rules.py) calls legal, each run through the audit (negminer/audit.py) on hard inputs
(tests/hardkit.py). The fast tier is a pairwise-covering subset of it (every pair of axis values that occurs in a
legal combination occurs in one of the fast cases); ``make conformance`` runs all of it."""

from __future__ import annotations

import itertools

import torch

from negminer import rules
from negminer.config import TrainConfig

SAMPLERS = {  # name -> TrainConfig options
    "uniform": {"negatives": "uniform"},
    "exact": {"negatives": "exact"},
    "cache": {"negatives": "cache"},
    "cache-partial": {"negatives": "cache", "cache_size": 400},   # rows outside: in-batch-only terms
    "prefilter": {"negatives": "cache", "prefilter_top": 64},
    "cache-stream": {"negatives": "cache-stream", "cache_size": 300},
    "tree": {"negatives": "tree", "tree_beam": 2, "tree_leaf_size": 16},
    "tree-proposal": {"negatives": "tree", "tree_beam": 2, "tree_leaf_size": 16, "tree_mode": "proposal"},
    "tree-descend": {"negatives": "tree", "tree_leaf_size": 16, "tree_branching": 4, "tree_mode": "descend"},
    "mined": {"negatives": "mined"},
}
AXES = {
    "sampler": list(SAMPLERS),
    "inbatch": [True, False],
    "shared": [False, True],
    "margin": [None, 0.1],
    "replacement": [False, True],
    "batching": ["random", "ngame"],
    "memory": ["plain", "accumulation", "gradcache"],
}
BATCH, CLUSTER, K = 24, 6, 6


def config(case: dict) -> TrainConfig:
    opts = dict(SAMPLERS[case["sampler"]], num_negatives=K, inbatch=case["inbatch"], share_negatives=case["shared"],
                margin=case["margin"], replacement=case["replacement"], batching=case["batching"],
                memory=case["memory"], batch_size=BATCH, encoder="static")
    if case["batching"] == "ngame":
        opts["ngame_cluster_size"] = CLUSTER
    if case["memory"] == "accumulation":
        opts["accumulation"] = 2
    return TrainConfig(**opts)


def legal_cases() -> list[dict]:
    out = []
    for values in itertools.product(*AXES.values()):
        case = dict(zip(AXES, values))
        if rules.legal(config(case)):
            out.append(case)
    return out


def pairwise(cases: list[dict]) -> list[dict]:
    """A greedy subset of ``cases`` in which every pair of axis values that occurs in ``cases`` occurs."""
    def pairs(c):
        items = sorted((k, str(v)) for k, v in c.items())
        return set(itertools.combinations(items, 2))

    todo = set().union(*(pairs(c) for c in cases))
    chosen = []
    while todo:
        best = max(cases, key=lambda c: (len(pairs(c) & todo), -cases.index(c)))
        chosen.append(best)
        todo -= pairs(best)
    return chosen


def case_id(case: dict) -> str:
    bits = [case["sampler"], "inbatch" if case["inbatch"] else "no-inbatch"]
    bits += ["shared"] if case["shared"] else []
    bits += ["margin"] if case["margin"] is not None else []
    bits += ["replacement"] if case["replacement"] else []
    bits += [case["batching"], case["memory"]]
    return "-".join(bits)


def build(case: dict, pb):
    """The audit Setup of ``case`` on problem ``pb``: the sampler, batcher and loss as the trainer builds them."""
    from hardkit import setup_of

    from negminer.samplers import build_sampler

    cfg = config(case)
    mined = None
    if case["sampler"] == "mined":  # each query's 20 best stale-scored non-positives
        s = pb.queries @ pb.stale.T
        for i in range(len(pb.queries)):
            s[i, torch.as_tensor(sorted(pb.exclude(i)))] = -1e9
        mined = s.topk(20, dim=1).indices.tolist()
    sampler = build_sampler(cfg, replacement=cfg.replacement, mined=mined)
    setup = setup_of(pb, sampler, batch=BATCH, batching=case["batching"], cluster=CLUSTER, inbatch=case["inbatch"],
                     share=case["shared"], accumulation=cfg.accumulation)
    if case["sampler"] == "cache-stream":  # a queue of recent positives, as a few steps of training leave it
        from negminer.types import Batch, Draw, Exclusions

        g = torch.Generator().manual_seed(7)
        for step in range(40):
            idx = torch.randint(len(pb.queries), (BATCH,), generator=g)
            pos = torch.tensor([pb.positives[int(i)][0] for i in idx])
            b = Batch(step, pos, Exclusions([set()] * BATCH, len(pb.fresh)), pb.fresh[pos], g, 20.0)
            sampler.update(b, Draw.empty(BATCH), None, setup.store, step + 1)
    return cfg, setup
