"""One test per defect of issue #25 (each failed at e2b1f5c): parts that were right alone and wrong together."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hardkit import hard_problem, run_audit, sampler_named, setup_of
from samplerkit import make_store

from negminer.audit import log_z_hat
from negminer.losses import SoftmaxLoss
from negminer.pipeline import loss_inputs
from negminer.samplers import CacheSampler, TreeSampler, UniformSampler, kernel
from negminer.types import Batch, Exclusions


def within(r: dict, sigmas: float = 3.0) -> bool:
    return abs(r["z_ratio"] - 1) < sigmas * r["z_ratio_se"]


# ---- 1. the margin's dropped rows stay out of every pool -------------------------------------------------

@pytest.mark.parametrize("name,share", [("cache", False), ("cache", True), ("tree", False)])
def test_margin_dropped_rows_never_come_back_through_another_pool(name, share):
    """A row above query i's margin is not drawn for i (pi = 0); as another query's positive (in-batch) or
    draw (shared) it must be masked for i, not weighted by 1 / c_batch. At e2b1f5c: z_ratio ~1e7."""
    pb = hard_problem()
    opts = {"tree_beam": 2, "tree_leaf_size": 16} if name == "tree" else {}
    s = sampler_named(name, 8, margin=0.1, share_negatives=share, **opts)
    r = run_audit(pb, setup_of(pb, s, share=share), draws=150)
    assert within(r), r


# ---- 2. the batch positives' inclusion probabilities respect the exclusions ------------------------------

def _pool_case(kernel_on: bool, monkeypatch):
    monkeypatch.setenv("NEGMINER_KERNEL", "1" if kernel_on else "0")
    monkeypatch.setattr(kernel, "_tried", False)
    monkeypatch.setattr(kernel, "_lib", None)
    g = torch.Generator().manual_seed(3)
    E = torch.nn.functional.normalize(torch.randn(300, 8, generator=g), dim=1)
    pos = torch.tensor([4, 9, 4, 120, 250])          # a target that is two queries' positive
    q = torch.nn.functional.normalize(E[pos] + 0.1 * torch.randn(5, 8, generator=g), dim=1)
    excl = [{4, 9}, {9}, {4, 5}, {120, 121, 4}, {250}]  # several positives, a duplicate (121)
    store, _ = make_store(E)
    return E, q, pos, excl, store


@pytest.mark.parametrize("kernel_on", [True, False], ids=["kernel", "torch"])
@pytest.mark.parametrize("sampler", ["cache", "cache-replacement", "prefilter", "uniform", "tree"])
def test_batch_positive_excluded_for_a_query_has_zero_inclusion(sampler, kernel_on, monkeypatch):
    """pool_log_pi[i, j] = -inf wherever pos_rows[j] is excluded for query i (its own positive included): the
    watched logits were recorded before the exclusions (torch path and the kernel's mark()), so shared
    negatives summed pi near 1 for a query's own positive and Z came out 9% low."""
    E, q, pos, excl, store = _pool_case(kernel_on, monkeypatch)
    if sampler == "uniform":
        s = UniformSampler(6)
    elif sampler == "tree":
        s = TreeSampler(6, beam=2, branching=4, leaf_size=16, fallback=0)
        s.setup(store, None, 0)
    else:
        s = CacheSampler(6, replacement=sampler == "cache-replacement", prefilter_top=64 if sampler == "prefilter" else 0)
        s.setup(store, None, 0, encode=lambda rows, step: None)
    batch = Batch(0, pos, Exclusions(excl, 300), E[pos], torch.Generator().manual_seed(0), 10.0)
    draw = s.sample(q, batch, store)
    bad = torch.tensor([[int(r) in ex for r in pos] for ex in excl])
    assert bool(bad.diagonal().all())
    assert torch.isneginf(draw.pool_log_pi[bad]).all(), draw.pool_log_pi
    if sampler != "prefilter":  # (the prefilter's pi is 0 outside each query's top K: a truncated softmax)
        assert torch.isfinite(draw.pool_log_pi[~bad]).all()


def test_shared_negatives_with_inbatch_on_topic_clustered_data():
    """The end-to-end effect of 2 (and of counting in-batch terms given the batch): shared negatives with the
    in-batch pool estimate Z. At e2b1f5c: 0.965 +- 0.007 on this problem."""
    pb = hard_problem(topics=4, spread=0.3, query_noise=0.2)
    s = sampler_named("cache", 4, share_negatives=True)
    r = run_audit(pb, setup_of(pb, s, share=True), draws=300)
    assert within(r), r


# ---- 3. shared negatives need each query's own noise ------------------------------------------------------

@pytest.mark.parametrize("kernel_on", [True, False], ids=["kernel", "torch"])
def test_shared_negatives_are_unbiased_for_identical_queries_and_duplicate_targets(kernel_on, monkeypatch):
    """Two identical queries and two targets with one text, side by side: with the stride-1 noise windows a
    query's key on row j was the next query's key on row j - 1, so one query's threshold depended on the other's
    draw and E[Z_hat] / Z was 1.28 (k = 1). With a window per query the estimate is unbiased."""
    monkeypatch.setenv("NEGMINER_KERNEL", "1" if kernel_on else "0")
    monkeypatch.setattr(kernel, "_tried", False)
    monkeypatch.setattr(kernel, "_lib", None)
    x = torch.tensor([0.2, 0.3, 1.0, 1.0, 0.9, 0.1, 0.5, 0.95])
    E = torch.nn.functional.normalize(torch.stack([x, 1 - x, torch.zeros(8), torch.zeros(8)], 1), dim=1)
    q = torch.tensor([[1.0, 0, 0, 0]] * 3)
    store, _ = make_store(E)
    pos, ex, scale = torch.tensor([5, 5, 5]), Exclusions([{5}] * 3, 8), 8.0
    z = float((q[0] @ E.T * scale).masked_fill(torch.arange(8) == 5, -math.inf).exp().sum())
    s = CacheSampler(1)
    s.setup(store, None, 0, encode=lambda rows, step: None)
    s.shared = True
    zs = []
    for r in range(3000):
        bt = Batch(r, pos, ex, E[pos], torch.Generator().manual_seed(r), scale)
        draw = s.sample(q, bt, store)
        kw = loss_inputs(SoftmaxLoss(), q, E[pos], scale, bt, draw, E[draw.ids], inbatch=False, share=True)
        zs.append(float(log_z_hat(kw)[0].exp()) / z)
    zs = np.array(zs)
    se = zs.std() / math.sqrt(len(zs))
    assert abs(zs.mean() - 1) < 3 * se, (zs.mean(), se)


# ---- 6. Nystrom moves only the cohort its map describes ---------------------------------------------------

def test_nystrom_leaves_rows_encoded_since_the_last_update_as_they_are():
    """Half the pool written back fresh, a fraction of it re-encoded in the update's step: the map (exact here:
    the tower's change is linear) moves only the rows as old as its landmarks; the fresh ones stay fresh. At
    e2b1f5c the fresh half went from 0 to 0.11 staleness and this step's re-encoded rows from 0 to ~1."""
    from samplerkit import encoder

    from negminer.refreshers import Fraction, Fresh, Nystrom, relative_change

    g = torch.Generator().manual_seed(0)
    n, d = 400, 16
    X = torch.randn(n, d, generator=g)
    Y = X @ (torch.eye(d) + 0.4 * torch.randn(d, d, generator=g))   # the tower now
    store, model = make_store(X)
    model.E = Y
    fr, ny = Fraction(0.1, "random"), Nystrom(landmarks=64, every=5, ridge=0.0)
    for r in (fr, ny):
        r.setup(store, None, encoder(store, model), seed=0)
    half = torch.arange(0, n, 2)
    store.write(half, Y[half], 4)                                    # step 4's write-back: fresh rows
    f = Fresh(4, half[:3], Y[half[:3]])
    fr.after_step(f)                                                 # re-encodes 40 rows at step 5
    now = (store.age == 5).nonzero().flatten()
    ny.after_step(f)                                                 # the update at step 5
    assert ny.stats["nystrom_applied"] == 1.0
    assert relative_change(store.embeddings(half), Y[half]) < 1e-10
    assert relative_change(store.embeddings(now), Y[now]) < 1e-10
    old = torch.arange(1, n, 2)
    assert relative_change(store.embeddings(old), Y[old]) < 1e-6 < relative_change(X[old], Y[old])


# ---- 7. the corrector leaves the rows the step just encoded ---------------------------------------------

@pytest.mark.parametrize("apply", ["all", "scored"])
def test_corrector_does_not_move_the_rows_written_back_this_step(apply):
    """Write-back writes a step's rows with age = that step; the corrector's rewrite after it (age < step + 1)
    moved them too, the most drawn rows of the cache (staleness 0.005 -> 0.130). They stay as written now."""
    from samplerkit import encoder

    from negminer.refreshers import Corrector, Fresh

    g = torch.Generator().manual_seed(1)
    n, d = 600, 16
    X = torch.randn(n, d, generator=g)
    Y = X + 0.4 * torch.tanh(X @ (torch.randn(d, d, generator=g) / 4))
    store, model = make_store(X)
    model.E = Y
    c = Corrector(d, apply=apply, every=10, lr=3e-3, warmup=5)
    c.setup(store, None, encoder(store, model), seed=0)
    order = torch.randperm(n, generator=g)
    for step in range(40):
        rows = order[step * 12:(step + 1) * 12]
        store.write(rows, Y[rows], step)          # the write-back of ``step``: age = step
        c.after_step(Fresh(step, rows, Y[rows]))
    assert c.active(40)
    # step 39 (a rewrite step: 40 % 10 == 0) wrote ``rows``: read back exactly as written
    torch.testing.assert_close(store.embeddings(rows), Y[rows], rtol=0, atol=0)
    rest = order[480:]                            # never written: corrected
    assert not torch.equal(store.embeddings(rest), X[rest])


# ---- 8. each part draws from its own generator ------------------------------------------------------------

def test_fraction_and_nystrom_draw_different_rows_with_seed_zero():
    """With --seed 0 both seeded their generators with the step alone: Nystrom's landmarks were the rows the
    fraction refresher had just re-encoded (no drift to fit: Nystrom never applied)."""
    from negminer.refreshers import Fraction, Nystrom

    store, _ = make_store(torch.randn(1000, 8))
    fr, ny = Fraction(0.3, "random"), Nystrom(landmarks=50, every=5)
    fr.setup(store, None, None, seed=0)
    ny.setup(store, None, None, seed=0)
    for step in (5, 10, 15):
        a = set(fr.rows(step).tolist())
        b = set(ny.landmark_positions(1000, step).tolist())
        assert len(a & b) < 30, (step, len(a & b))  # chance: 300 x 50 / 1000 = 15 (all 50 at e2b1f5c)


# ---- 4 and 5. NGAME: whole clusters per (micro-)batch, so the in-batch counts are exact ---------------------

@pytest.mark.parametrize("accumulation", [1, 2], ids=["plain", "accumulation"])
def test_ngame_in_batch_counts_hold_for_rows_only_the_batch_brings(accumulation):
    """With a partial cache, rows outside it come only through the in-batch pool, weighted by the batcher's
    expected count. At e2b1f5c NGAME batches were cut every B queries from clusters whose sizes rarely divide B
    (a cluster mate shared the batch with probability 0.73-0.91 while counted as always present), and a
    contiguous micro-batch of a cluster-ordered batch got (b-1)/(B-1) of the batch's count (~4x too small).
    203 queries, batches of 24, clusters of 12: one remainder cluster of 11, two clusters per batch."""
    pb = hard_problem()
    s = sampler_named("cache", 6, cache_size=200)
    st = setup_of(pb, s, batching="ngame", cluster=12, accumulation=accumulation)
    r = run_audit(pb, st, draws=200)
    assert r["z_coverage"] < 0.8  # the rows outside the cache, brought by the batch only, matter here
    assert within(r), r


def test_ngame_cluster_sizes_that_do_not_divide_the_micro_batch_are_refused():
    from negminer import rules
    from negminer.config import TrainConfig
    from negminer.errors import ConfigError

    with pytest.raises(ConfigError, match="must divide the micro-batch"):
        rules.check(TrainConfig(batching="ngame", ngame_cluster_size=8, batch_size=24, memory="accumulation",
                                accumulation=2))


# ---- 9. GradCache with batch-norm towers ----------------------------------------------------------------

def test_gradcache_refuses_a_tower_with_batch_norm(tiny_beir, tmp_path):
    """Chunk statistics would change the gradient and running statistics would update on both passes."""
    from negminer.config import TrainConfig
    from negminer.encoders import build_encoder
    from negminer.encoders.dual import DualEncoder
    from negminer.errors import ConfigError
    from negminer.train.trainer import Trainer

    static = build_encoder("static").query_tower

    class BNTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.bn = static, torch.nn.BatchNorm1d(static.dim)
            self.dim = static.dim

        def tokenize(self, texts, max_length):
            return self.inner.tokenize(texts, max_length)

        def token_ids(self, texts, max_length):
            return self.inner.token_ids(texts, max_length)

        def collate(self, ids):
            return self.inner.collate(ids)

        def forward(self, features):
            return self.bn(self.inner(features))

    model = DualEncoder(BNTower())
    for memory in ("gradcache", "plain"):
        cfg = TrainConfig(data=str(tiny_beir), out=str(tmp_path / memory), encoder="static", memory=memory,
                          batch_size=8, steps=1)
        if memory == "gradcache":
            with pytest.raises(ConfigError, match="batch-norm layers"):
                Trainer(cfg, model=model)
        else:
            Trainer(cfg, model=model)  # the plain batch normalises by the batch's statistics: accepted
    with pytest.raises(ConfigError, match="batch-norm layers"):
        Trainer(TrainConfig(data=str(tiny_beir), out=str(tmp_path / "all"), encoder="static", negatives="all",
                            batch_size=8, steps=1), model=model)
