"""The conformance suite: for every legal combination of the parts (grid.py), on hard inputs (hardkit.py), the
mean of the loss's partition-function estimate and of its gradient with respect to the query embeddings equal
the brute-force values over every eligible target, within their standard errors.

Memory strategies enter the estimator through their micro-batches: accumulation's micro-batches have their own
pools, draws and in-batch counts; GradCache's step is the plain batch's (its gradient equals the plain step's:
tests/memory/test_gradcache.py), so its cases run the plain estimator; ContAccum's bank is uncorrected by design.

Fast tier (CI): a pairwise-covering subset. Full tier: ``make conformance`` (``pytest -m conformance``), every
legal combination (about 600, ~40 minutes on 2 cores).

A case passes when |z_ratio - 1| < 3 standard errors and zgrad_t (the squared bias of the mean of
grad_q Z_hat / Z over its expected squared standard error, about 1 when unbiased) < 2.5. A case that misses is
run again with three times the draws and another seed and must pass then: with hundreds of cases some miss by
chance at 3 sigma once, while a bias (the defects of #25 gave 0.97 to 1e7) misses again, by more."""

from __future__ import annotations

import pytest
from grid import build, case_id, legal_cases, pairwise
from hardkit import hard_problem, run_audit

from negminer.audit import no_correction

CASES = legal_cases()
FAST = pairwise(CASES)
DRAWS = 120


def check(case: dict, draws: int = DRAWS) -> dict:
    pb = hard_problem()
    cfg, setup = build(case, pb)
    why = no_correction(setup, cfg.loss, cfg)
    if why is not None:
        return {"uncorrected": why}
    r = run_audit(pb, setup, draws)
    if abs(r["z_ratio"] - 1) >= 3 * r["z_ratio_se"] or r["zgrad_t"] >= 2.5:
        r = {**run_audit(pb, setup, 3 * draws, seed=1), "first": r}
    return r


def assert_conforms(case: dict) -> None:
    r = check(case)
    if "uncorrected" in r:
        assert case["sampler"] == "mined", r  # the only uncorrected sampler of the grid
        return
    assert abs(r["z_ratio"] - 1) < 3 * r["z_ratio_se"], (case_id(case), r)
    assert r["zgrad_t"] < 2.5, (case_id(case), r)


@pytest.mark.parametrize("case", FAST, ids=[case_id(c) for c in FAST])
def test_fast_tier(case):
    assert_conforms(case)


@pytest.mark.conformance
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_full_tier(case):
    assert_conforms(case)


def test_the_fast_tier_covers_every_pair_of_axis_values():
    import itertools

    def pairs(c):
        return set(itertools.combinations(sorted((k, str(v)) for k, v in c.items()), 2))

    assert set().union(*(pairs(c) for c in FAST)) == set().union(*(pairs(c) for c in CASES))
    assert {c["sampler"] for c in FAST} == {"uniform", "exact", "cache", "cache-partial", "prefilter", "cache-stream",
                                           "tree", "tree-proposal", "tree-descend", "mined"}
