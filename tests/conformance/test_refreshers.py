"""Refreshers in combination, in the trainer's order (write-back first, corrector last): no row encoded in a step
is moved afterwards in that step, and where the fitted map is exact (the tower's change is linear), the rows
it moves get less stale while the fresh ones stay fresh."""

from __future__ import annotations

import itertools

import pytest
import torch
from samplerkit import encoder, make_store

from negminer.refreshers import Corrector, Fraction, Fresh, Full, Nystrom, WriteBack, relative_change

N, D, STEPS = 500, 16, 12
OTHERS = {"fraction": lambda: Fraction(0.04, "random"), "full": lambda: Full(5),
          "nystrom": lambda: Nystrom(landmarks=64, every=3, ridge=0.0),
          "corrector": lambda: Corrector(D, every=2, warmup=2, lr=3e-3)}
COMBOS = [c for n in range(1, 4) for c in itertools.combinations(OTHERS, n)]


def towers(seed=0):
    """The tower at step t gives X A_t: a linear drift, so a map fitted on landmarks is exact."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, D, generator=g)
    steps = [torch.eye(D) + 0.08 * torch.randn(D, D, generator=g) for _ in range(STEPS + 1)]
    maps = list(itertools.accumulate(steps, lambda a, b: a @ b))
    return X, maps


@pytest.mark.parametrize("combo", COMBOS, ids=["+".join(c) for c in COMBOS])
def test_no_row_encoded_in_a_step_is_moved_in_that_step(combo):
    X, maps = towers()
    store, model = make_store(X @ maps[0])
    refs = [WriteBack("train")] + [OTHERS[n]() for n in combo if n != "corrector"] + \
           [OTHERS[n]() for n in combo if n == "corrector"]
    for r in refs:
        r.setup(store, None, encoder(store, model), seed=0)
    encoded: dict[int, torch.Tensor] = {}

    def listen(rows, step):
        if step is not None:  # an encode (or a write-back of this step's training forward)
            for i, row in enumerate(rows.tolist()):
                encoded[row] = store.emb[row].clone()

    store.listeners.append(listen)
    g = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        model.E = X @ maps[step + 1]  # the tower after this step's update (refreshes encode with it)
        encoded.clear()
        rows = torch.randperm(N, generator=g)[:20]
        f = Fresh(step, rows[:8], (X @ maps[step])[rows[:8]], rows[8:], (X @ maps[step])[rows[8:]])
        for r in refs:
            r.after_step(f)
        for row, value in encoded.items():  # every row encoded in this step holds what was encoded
            assert torch.equal(store.emb[row], value), (combo, step, row)


def test_an_exact_map_makes_moved_rows_fresh_and_leaves_the_rows_encoded_since_as_they_are():
    X, maps = towers()
    store, model = make_store(X @ maps[0])
    wb, ny = WriteBack("train"), Nystrom(landmarks=64, every=4, ridge=0.0)
    for r in (wb, ny):
        r.setup(store, None, encoder(store, model), seed=0)
    g = torch.Generator().manual_seed(2)
    for step in range(8):
        model.E = X @ maps[step + 1]
        rows = torch.randperm(N, generator=g)[:30]
        fresh_now = (X @ maps[step])[rows]  # the training forward of step ``step``: the tower before its update
        wb.after_step(Fresh(step, rows, fresh_now))
        if (step + 1) % 4 == 0:
            cohort = (store.age <= ny.since).nonzero().flatten()
            written = (store.age > ny.since).nonzero().flatten()
            before_c = relative_change(store.embeddings(cohort), model.E[cohort])
            before_w = store.embeddings(written).clone()
            ny.after_step(Fresh(step, rows, fresh_now))
            assert ny.stats["nystrom_applied"] == 1.0
            after_c = relative_change(store.embeddings(cohort), model.E[cohort])
            # the first cohort is one tower's output (the fill): the map is exact; later cohorts also hold rows
            # written back between earlier updates (other towers), so one map only brings them closer
            assert before_c > 1e-3 and after_c < (1e-6 if step < 4 else 0.2 * before_c), (step, before_c, after_c)
            assert torch.equal(store.embeddings(written), before_w)  # rows encoded since the update: untouched
        else:
            ny.after_step(Fresh(step, rows, fresh_now))
