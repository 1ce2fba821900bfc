"""The one exclusion helper agrees with a brute-force set lookup in all its forms."""

import torch

from negminer.samplers import Exclusions


def test_exclusions_match_brute_force():
    g = torch.Generator().manual_seed(0)
    n, b = 200, 6
    sets = [set(torch.randint(n, (int(torch.randint(0, 8, (1,), generator=g)),), generator=g).tolist())
            for _ in range(b)]
    ex = Exclusions(sets, n)
    dense = ex.dense(None)
    assert dense.shape == (b, n) and all(set(dense[i].nonzero().flatten().tolist()) == sets[i] for i in range(b))
    rows = torch.randint(n, (b, 30), generator=g)
    assert ex.contains(rows).tolist() == [[int(r) in sets[i] for r in rows[i]] for i in range(b)]
    for cand, is_sorted in ((torch.randperm(n, generator=g)[:120], False), (torch.arange(0, n, 2), True)):
        qi, pos = ex.positions(cand, sorted_cand=is_sorted)
        want = sorted((int(p), i) for i in range(b) for p, r in enumerate(cand.tolist()) if r in sets[i])
        assert sorted(zip(pos.tolist(), qi.tolist())) == want
        assert (pos[1:] >= pos[:-1]).all()
    qi, pos = ex.positions(None)
    assert sorted(zip(pos.tolist(), qi.tolist())) == sorted((r, i) for i in range(b) for r in sets[i])


def test_no_exclusions():
    ex = Exclusions([set(), set()], 10)
    assert not ex.contains(torch.zeros(2, 3, dtype=torch.long)).any()
    assert ex.positions(torch.arange(10))[0].numel() == 0
