"""The false-negative filters of training (#27): --relative-margin and --max-score (sentence-transformers'
relative_margin / max_score, NV-Retriever's positive-aware filtering) beside --margin. A candidate is dropped
when any filter set drops it; the dropped rows are exactly those whose stale score is above a threshold
(brute force on topic-clustered targets, where many candidates score above the positive), they are never
drawn, and they leave every pool (in-batch columns, other queries' draws: Draw.drop)."""

from __future__ import annotations

import pytest
import torch
from hardkit import hard_problem, run_audit, sampler_named, setup_of, store_of

from negminer.cli import main
from negminer.pipeline.assemble import inbatch_mask, pool_mask
from negminer.samplers.base import score_threshold
from negminer.types import Batch, Exclusions

FILTERS = {
    "relative": dict(relative_margin=0.05),
    "max_score": dict(max_score=0.45),
    "all_three": dict(margin=0.02, relative_margin=0.1, max_score=0.5),
}
NEAR = 1e-5  # scores this close to a threshold may fall either side with another summation order


def brute_force(S: torch.Tensor, s_pos: torch.Tensor, margin=None, relative_margin=None, max_score=None):
    """([B, N] dropped, [B, N] too close to a threshold to tell), each rule on its own, then OR."""
    rules = []
    if margin is not None:
        rules.append(s_pos - margin)
    if relative_margin is not None:
        rules.append(s_pos - s_pos.abs() * relative_margin)  # sentence-transformers: |positive| x R
    if max_score is not None:
        rules.append(torch.full_like(s_pos, max_score))
    drop = torch.zeros_like(S, dtype=torch.bool)
    near = torch.zeros_like(drop)
    for t in rules:
        drop |= S > t.unsqueeze(1)
        near |= (S - t.unsqueeze(1)).abs() < NEAR
    return drop, near


def test_threshold_is_the_lowest_of_the_rules_and_follows_sentence_transformers():
    s_pos = torch.tensor([0.8, 0.2, 0.0, -0.4])
    assert score_threshold(s_pos) is None
    torch.testing.assert_close(score_threshold(s_pos, relative_margin=0.1), torch.tensor([0.72, 0.18, 0.0, -0.44]))
    # a negative positive score: positive - |positive| x R stays below the positive (positive x (1 - R) would
    # be above it; sentence-transformers #3819)
    assert float(score_threshold(s_pos, relative_margin=0.1)[3]) < -0.4
    torch.testing.assert_close(score_threshold(s_pos, max_score=0.5), torch.full((4,), 0.5))
    torch.testing.assert_close(score_threshold(s_pos, margin=0.05, relative_margin=0.1, max_score=0.5),
                               torch.tensor([0.5, 0.15, -0.05, -0.45]))
    g = torch.Generator().manual_seed(0)
    S, sp = torch.rand(50, 300, generator=g) * 2 - 1, torch.rand(50, generator=g) * 2 - 1
    for opts in FILTERS.values():
        drop, _ = brute_force(S, sp, **opts)
        assert torch.equal(S > score_threshold(sp, **opts).unsqueeze(1), drop)


def _case(name: str, k: int, **filters):
    """A batch of 24 topic-clustered queries, the sampler set up on the stale store, the brute-force drops."""
    pb = hard_problem()
    n = len(pb.fresh)
    idx = list(range(0, 48, 2))
    opts = {"tree_beam": 2, "tree_leaf_size": 16} if name == "tree" else {}
    if name == "exact":
        opts["selection"] = "topk"
    if name == "ance":
        opts["ance_top"] = n
    s = sampler_named(name, k, **filters, **opts)
    store = store_of(pb.stale)
    s.setup(store, None, 0, encode=lambda rows, step: None)
    pos = torch.tensor([pb.positives[i][0] for i in idx])
    excl = Exclusions([pb.exclude(i) for i in idx], n)
    q = pb.queries[idx]
    batch = Batch(0, pos, excl, pb.fresh[pos], torch.Generator().manual_seed(1), 20.0)
    S = q @ pb.stale.T
    s_pos = (q * pb.fresh[pos]).sum(-1)
    drop, near = brute_force(S, s_pos, **filters)
    return pb, s, store, q, batch, S, s_pos, excl.dense(None), drop, near


@pytest.mark.parametrize("filt", list(FILTERS))
@pytest.mark.parametrize("name", ["exact", "cache", "tree", "ance"])
def test_dropped_candidates_are_exactly_those_above_the_thresholds(name, filt):
    filters = FILTERS[filt]
    pb, s, store, q, batch, S, s_pos, excl, drop, near = _case(name, 701 if name in ("exact", "ance") else 16,
                                                               **filters)
    b, n = S.shape
    # topic-clustered targets: several candidates score above the positive for most queries
    above = (S > s_pos.unsqueeze(1)) & ~excl
    assert (above.sum(1) >= 3).float().mean() > 0.8
    assert drop.any(1).all() and (~drop & ~excl).any(1).all()
    draw = s.sample(q, batch, store)
    # Draw.drop: the rows the filters removed from each query's eligible set
    got = draw.drop(torch.arange(n))
    assert torch.equal(got[~near], drop[~near]), (got ^ drop).sum()
    # never drawn
    usable = ~draw.mask
    dropped_drawn = drop.gather(1, draw.ids) & usable & ~near.gather(1, draw.ids)
    assert not dropped_drawn.any()
    if name in ("exact", "ance"):  # k = N: the usable draws are every eligible row, nothing else
        for i in range(b):
            ids = set(draw.ids[i][usable[i]].tolist())
            want = set((~excl[i] & ~drop[i]).nonzero().flatten().tolist())
            fuzzy = set(near[i].nonzero().flatten().tolist())
            assert ids - fuzzy == want - fuzzy
    else:  # the first draw's proposal is -inf exactly at the excluded and dropped rows
        log_q = s.proposal(q, batch, store)
        gone = torch.isneginf(log_q)
        assert torch.equal(gone[~near], (excl | drop)[~near])
    # the in-batch pool: a batch positive dropped for query i is masked for i, and has no inclusion probability
    cols = batch.pos_rows
    want = inbatch_mask(cols, batch.excl) | drop[:, cols]
    fuzzy = near[:, cols]
    assert torch.equal(pool_mask(batch, draw)[~fuzzy], want[~fuzzy])
    if draw.pool_log_pi is not None:
        assert torch.isneginf(draw.pool_log_pi[drop[:, cols] & ~fuzzy]).all()


def test_filters_compose_with_the_margin():
    """With the three set, a row is dropped when any one drops it: the union of the single-filter drops."""
    single = {}
    for key, opts in (("margin", dict(margin=0.02)), ("relative", dict(relative_margin=0.1)),
                      ("max", dict(max_score=0.5))):
        _, s, store, q, batch, S, _, _, _, near = _case("cache", 8, **opts)
        single[key] = s.sample(q, batch, store).drop(torch.arange(S.shape[1]))
    _, s, store, q, batch, S, _, _, drop, near = _case("cache", 8, **FILTERS["all_three"])
    got = s.sample(q, batch, store).drop(torch.arange(S.shape[1]))
    union = single["margin"] | single["relative"] | single["max"]
    assert torch.equal(got, union)
    assert torch.equal(got[~near], drop[~near])
    assert all((union & ~v).any() for v in single.values())  # each rule drops rows the others keep


@pytest.mark.parametrize("name,share", [("cache", False), ("cache", True), ("tree", False)])
def test_filtered_rows_never_come_back_through_another_pool(name, share):
    """As test_margin_dropped_rows_never_come_back_through_another_pool (conformance/test_regressions.py), for
    the relative margin and the max score: the loss stays an unbiased estimate of Z over the eligible rows."""
    pb = hard_problem()
    opts = {"tree_beam": 2, "tree_leaf_size": 16} if name == "tree" else {}
    s = sampler_named(name, 8, relative_margin=0.1, max_score=0.5, share_negatives=share, **opts)
    r = run_audit(pb, setup_of(pb, s, share=share), draws=150)
    assert abs(r["z_ratio"] - 1) < 3 * r["z_ratio_se"], r


# ---- the training CLI -------------------------------------------------------------------------------

def _train(data, out, *extra):
    return ["train", "--data", str(data), "--out", str(out), "--encoder", "static", "--batch-size", "8",
            "--steps", "2", "--quiet", "--no-zero-shot", "--num-negatives", "4", *extra]


def test_training_accepts_the_filters(tiny_beir, tmp_path, capsys):
    assert main(_train(tiny_beir, tmp_path / "dry", "--negatives", "cache", "--relative-margin", "0.05",
                       "--max-score", "0.9", "--margin", "0.01", "--dry-run")) == 0
    out = capsys.readouterr().out
    assert "relative margin 0.05" in out and "max score 0.9" in out and "margin 0.01" in out
    assert main(_train(tiny_beir, tmp_path / "run", "--negatives", "exact", "--relative-margin", "0.05",
                       "--max-score", "0.9")) == 0
    assert (tmp_path / "run" / "model").is_dir()


@pytest.mark.parametrize("flag,value", [("--relative-margin", "0.05"), ("--max-score", "0.8")])
@pytest.mark.parametrize("sampler", ["uniform", "mined", "inbatch"])
def test_training_refuses_the_filters_without_scores(tiny_beir, tmp_path, capsys, flag, value, sampler):
    assert main(_train(tiny_beir, tmp_path / "x", "--negatives", sampler, flag, value)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{flag} needs a sampler that scores candidates" in err, err
    assert f"--negatives {sampler} has no scores" in err
    if sampler == "mined":
        assert f"pass {flag} to negminer mine instead" in err


@pytest.mark.parametrize("value,needle", [("1.5", "--relative-margin 1.5"), ("-0.1", "--relative-margin -0.1"),
                                          ("nan", "--relative-margin nan")])
def test_training_checks_the_relative_margin_range(tiny_beir, tmp_path, capsys, value, needle):
    assert main(_train(tiny_beir, tmp_path / "x", "--negatives", "cache", "--relative-margin", value)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
