"""The oldest-first queue gives exactly sorted (age, row) order while rows are written in any order."""

import torch

from negminer.store import TargetStore
from negminer.store.oldest import OldestFirst


def reference(store, rows, count):
    key = store.age[rows].long() * (store.n + 1) + rows
    return rows[key.argsort()][:count]


def test_oldest_first_matches_a_full_sort_and_a_rebuild():
    n = 500
    store = TargetStore([str(i) for i in range(n)], [""] * n, 4)
    g = torch.Generator().manual_seed(0)
    cache = torch.randperm(n, generator=g)[:300].sort().values
    store.write(cache[:100], torch.zeros(100, 4), 0)  # some encoded at step 0, the rest never (-1)
    q = OldestFirst(store, cache)
    for step in range(1, 200):
        drawn = torch.randint(n, (20,), generator=g)  # write-back, some rows outside the cache
        store.write(drawn, torch.zeros(20, 4), step - 1)
        count = int(torch.randint(1, 30, (1,), generator=g))
        got = q.pop(count)
        assert torch.equal(got, reference(store, cache, count)), step
        store.write(got, torch.zeros(len(got), 4), step)  # the refresh
        if step % 50 == 0:  # what a resumed run rebuilds from the ages is the same queue
            assert torch.equal(OldestFirst(store, cache).pop(40), q.pop(40))
    assert sum(len(r) for r, _ in q.groups) < 300 + 200 * 50  # stale entries are dropped as the head passes


def test_whole_store_and_reload():
    store = TargetStore([str(i) for i in range(10)], [""] * 10, 2)
    q = OldestFirst(store)
    assert q.pop(3).tolist() == [0, 1, 2]
    store.write(torch.tensor([0, 1, 2]), torch.zeros(3, 2), 0)
    assert q.pop(3).tolist() == [3, 4, 5]
    store.age[:] = torch.arange(10, 0, -1, dtype=torch.int32)  # as a checkpoint load would set them
    for fn in store.listeners:
        fn(None, None)
    assert q.pop(2).tolist() == [9, 8]
