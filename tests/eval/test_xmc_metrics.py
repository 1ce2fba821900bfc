"""XMC metrics agree with napkinxc.metrics (the reference the Extreme Classification Repository's
numbers are reproduced with) on random multi-label predictions, empty label sets and short rankings
included."""

import napkinxc.metrics as napkin  # the reference; in the test extras
import numpy as np
import pytest

from negminer.eval.xmc import inverse_propensity, xmc_metrics


def random_case(seed, n=300, labels=60):
    rng = np.random.default_rng(seed)
    zipf = 1 / np.arange(1, labels + 1) ** 1.1  # skewed label frequencies, as in XMC data
    zipf /= zipf.sum()
    def sets(m):
        return [sorted(set(rng.choice(labels, size=rng.integers(0, 6), p=zipf).tolist())) for _ in range(m)]
    train, true = sets(2000), sets(n)
    pred = [rng.permutation(labels)[: rng.integers(1, 8)].tolist() for _ in range(n)]  # some shorter than k
    for i in range(0, n, 3):  # a third of the rankings put true labels first, so hits are common
        pred[i] = (true[i] + [x for x in pred[i] if x not in true[i]])[:7]
    return train, true, pred, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ab", [(0.55, 1.5), (0.6, 2.6)])
def test_metrics_match_napkinxc(seed, ab):
    train, true, pred, labels = random_case(seed)
    q = inverse_propensity(train, labels, *ab)
    ref_q = napkin.Jain_et_al_inverse_propensity(train, *ab)
    np.testing.assert_allclose(q[: len(ref_q)], ref_q, rtol=1e-12)
    ours = xmc_metrics(pred, true, q, ks=(1, 3, 5))
    p = napkin.precision_at_k(true, pred, k=5)
    nd = napkin.ndcg_at_k(true, pred, k=5)
    psp = napkin.psprecision_at_k(true, pred, q, k=5)
    for k in (1, 3, 5):
        assert ours[f"p@{k}"] == pytest.approx(p[k - 1], abs=1e-12)
        assert ours[f"ndcg@{k}"] == pytest.approx(nd[k - 1], abs=1e-12)
        assert ours[f"psp@{k}"] == pytest.approx(psp[k - 1], abs=1e-12)
    assert 0 < ours["p@1"] < 1 and 0 < ours["psp@5"] < 1


def test_perfect_ranking_scores_one_and_mismatched_lengths_are_refused():
    true = [[1, 2], [3], [0, 4, 5]]
    q = np.ones(6)
    m = xmc_metrics([t + [9] for t in true], true, q, ks=(1,))
    assert m == {"p@1": 1.0, "ndcg@1": 1.0, "psp@1": 1.0}
    with pytest.raises(ValueError, match="2 predictions for 3 queries"):
        xmc_metrics(true[:2], true)
