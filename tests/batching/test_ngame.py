"""NGAME batching: balanced clusters, batches of whole clusters, the curriculum, the expected in-batch
counts of the mixture correction (Monte Carlo), and a resumable state."""

import numpy as np
import pytest
import torch

from negminer.batching import NgameBatcher, RandomBatcher, balanced_clusters


def blobs(k=32, per=16, d=24, noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)
    truth = torch.arange(k).repeat_interleave(per)
    x = centres[truth] + noise * torch.randn(k * per, d, generator=g)
    perm = torch.randperm(k * per, generator=g)
    return x[perm], truth[perm]


@pytest.mark.parametrize("n,size", [(512, 16), (1000, 16), (777, 5), (64, 64), (10, 3)])
def test_clusters_have_exactly_the_size_but_one_remainder(n, size):
    x = torch.randn(n, 8, generator=torch.Generator().manual_seed(n))
    lab = balanced_clusters(x, size, seed=1)
    counts = torch.bincount(lab)
    assert counts.sum() == n and (counts > 0).all()
    assert sorted(counts.tolist()) == sorted([size] * (n // size) + ([n % size] if n % size else []))


def test_clusters_recover_separated_blobs():
    x, truth = blobs()
    lab = balanced_clusters(x, 16, seed=0)
    purity = sum(int(torch.bincount(truth[lab == c]).max()) for c in lab.unique()) / len(x)
    assert purity >= 0.9, purity
    assert float(balanced_clusters(torch.randn(512, 24), 16, seed=0).eq(lab).float().mean()) < 1  # not trivial


def make(n=512, b=64, size=16, **kw):
    pos = [[i % 200, 200 + i % 50] if i % 3 == 0 else [i % 200] for i in range(n)]
    return NgameBatcher(n, b, seed=5, positives=pos, num_targets=250, cluster_size=size, **kw), pos


def test_batches_are_made_of_whole_clusters():
    x, truth = blobs()
    nb, _ = make()
    nb.prepare(0, lambda idx: x[torch.as_tensor(idx)])
    assert nb.labels_epoch == 0 and nb.stats["ngame_encoded"] == 512
    seen = np.concatenate([nb.batch(s) for s in range(nb.batches_per_epoch)])
    assert sorted(seen) == list(range(512))  # one epoch covers every query once
    for s in range(nb.batches_per_epoch):
        assert len(set(nb.labels[nb.batch(s)].tolist())) == 64 // 16
    # the blobs share batches far more than random batches would make them
    same = np.mean([len(set(truth[nb.batch(s)].tolist())) for s in range(nb.batches_per_epoch)])
    rb = RandomBatcher(512, 64, 5)
    rand = np.mean([len(set(truth[rb.batch(s)].tolist())) for s in range(rb.batches_per_epoch)])
    assert same <= 6 and rand >= 25


def test_curriculum_and_reclustering_schedule():
    nb, _ = make(warmup=1, recluster_every=2, curriculum=[2, 3, 4])
    assert [nb.size_at(e) for e in range(6)] == [1, 1, 2, 4, 8, 8]
    assert [nb.clusters_epoch(e) for e in range(6)] == [-1, 1, 1, 3, 3, 5]
    x, _ = blobs()
    calls = []

    def enc(idx):
        calls.append(len(idx))
        return x[torch.as_tensor(idx)]

    bpe = nb.batches_per_epoch
    for step in range(4 * bpe):
        nb.prepare(step, enc)
        idx = nb.batch(step)
        nb.record(idx, x[torch.as_tensor(idx)])
        epoch = step // bpe
        if epoch >= 1 and nb.size_at(epoch) > 1:  # groups of the curriculum size, inside the clusters
            grp = nb.groups(epoch)
            assert torch.bincount(grp).max() <= nb.size_at(epoch)
            assert all(len(set(nb.labels[grp == g].tolist())) == 1 for g in grp.unique()[:20])
    # clustered at the starts of epochs 1 and 3 from the recorded embeddings: 512 = 8 x 64, every query
    # was seen, so nothing was encoded
    assert nb.labels_epoch == 3 and calls == []


def test_unseen_queries_are_encoded_when_reclustering():
    n, b = 500, 64  # 500 % 64 = 52 queries left out of each epoch
    nb = NgameBatcher(n, b, 1, [[i] for i in range(n)], n, cluster_size=8, warmup=1)
    x = torch.randn(n, 16)
    asked = []
    for step in range(nb.batches_per_epoch + 1):
        nb.prepare(step, lambda idx: (asked.append(len(idx)), x[torch.as_tensor(idx)])[1])
        idx = nb.batch(step)
        nb.record(idx, x[torch.as_tensor(idx)])
    assert asked == [52]


@pytest.mark.parametrize("n,b,size,micro", [(1000, 64, 16, 64), (1000, 64, 16, 32), (777, 40, 8, 40), (777, 40, 8, 16)])
def test_expected_in_batch_counts_match_simulation(n, b, size, micro):
    """c_i(j) of the mixture correction against the frequency of j among query i's in-batch negatives in its
    (micro-)batch over many epochs (clusters fixed; n not a multiple of the cluster size or the batch, so one
    remainder cluster sits out and clusters would straddle batches if they were not packed whole)."""
    g = torch.Generator().manual_seed(n)
    x = torch.nn.functional.normalize(torch.randn(n // 20 + 1, 24, generator=g), dim=1)[torch.arange(n) % (n // 20 + 1)]
    x = x + 0.05 * torch.randn(n, 24, generator=g)
    nb, pos = make(n=n, b=b, size=size)
    nb.prepare(0, lambda idx: x[torch.as_tensor(idx)])
    rng = np.random.default_rng(0)
    epochs = 300
    counts = np.zeros((n, 250))
    for e in range(epochs):
        order = nb.layout(0, salt=e)
        assert len(order) == n - n % size
        for s in range(nb.batches_per_epoch * b // micro):
            idx = order[s * micro:(s + 1) * micro]
            assert len(set(nb.labels[idx].tolist())) == micro // size  # whole clusters only
            picks = np.array([pos[i][rng.integers(len(pos[i]))] for i in idx])
            np.add.at(counts, (np.repeat(idx, micro), np.tile(picks, micro)), 1)
            np.add.at(counts, (idx, picks), -1)  # not its own pick
    freq = counts / epochs
    queries = torch.tensor([0, 3, 17, 100, 301])
    rows = torch.arange(250).unsqueeze(0)
    nb.batch(0)
    pred = nb.log_batch_count(rows, queries, size=micro).exp().numpy()
    for r, i in enumerate(queries.tolist()):
        own = set(pos[i])
        keep = np.array([t not in own for t in range(250)])
        err = np.abs(freq[i, keep] - pred[r, keep])
        sd = np.sqrt(np.maximum(pred[r, keep], 1e-3) / epochs)
        assert (err < 5 * sd + 1e-3).all(), (i, err.max())
        assert pred[r, keep].sum() == pytest.approx(freq[i, keep].sum(), rel=0.05)
    # size 1 (random batches): the random batcher's counts
    rb = RandomBatcher(n, b, 5, pos, 250)
    nr, _ = make(n=n, b=b, size=size, warmup=3)
    nr.batch(0)
    assert torch.allclose(nr.log_batch_count(rows, queries, size=micro), rb.log_batch_count(rows, queries, size=micro).expand(5, -1))
    with pytest.raises(ValueError, match="whole groups"):
        nb.log_batch_count(rows, queries, size=size // 2 + size)


def test_state_round_trip_gives_the_same_batches():
    x, _ = blobs()
    a, _ = make(recluster_every=1)
    a.prepare(0, lambda idx: x[torch.as_tensor(idx)])
    for s in range(3):
        a.record(a.batch(s), x[torch.as_tensor(a.batch(s))] + 0.3)
    t, m = a.state()
    b, _ = make(recluster_every=1)
    b.load_state(t, m)
    for s in range(3, 3 * a.batches_per_epoch):
        a.prepare(s, lambda idx: x[torch.as_tensor(idx)])
        b.prepare(s, lambda idx: x[torch.as_tensor(idx)])
        assert np.array_equal(a.batch(s), b.batch(s))
        a.record(a.batch(s), x[torch.as_tensor(a.batch(s))])
        b.record(b.batch(s), x[torch.as_tensor(b.batch(s))])
    assert torch.equal(a.labels, b.labels)
