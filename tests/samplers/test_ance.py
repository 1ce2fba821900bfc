"""ANCE's search: the exact top-K over the store by the chunked score pass, whatever the chunking."""

import pytest
import torch

from negminer.samplers.ance import AnceSampler
from samplerkit import batch, make_store, unit


@pytest.mark.parametrize("dtype,chunk", [("fp32", 97), ("fp32", 1 << 20), ("bf16", 300)])
def test_search_is_the_exact_topk(monkeypatch, dtype, chunk):
    E = unit(1001, 16, seed=3)
    E[500] = E[7]  # duplicate rows: equal scores
    store, _ = make_store(E, dtype=dtype)
    monkeypatch.setattr(store, "chunk_size", lambda: chunk)  # 97 < K: one chunk holds fewer rows than K
    q = unit(6, 16, seed=4)
    s, i = AnceSampler._search(q, store, 110)
    ref = q.to(store.compute_dtype) @ store.embeddings().to(store.compute_dtype).T
    rs, _ = ref.float().topk(110, dim=1)
    assert i.shape == (6, 110) and len(set(i[0].tolist())) == 110
    torch.testing.assert_close(s, rs)  # the same scores in the same order
    torch.testing.assert_close(ref.float().gather(1, i), s)  # and the rows carry them


def test_draws_come_from_the_stale_topk_without_positives():
    E = unit(400, 8, seed=1)
    store, _ = make_store(E)
    q = unit(3, 8, seed=2)
    stale = (q @ E.T).topk(21, dim=1).indices  # top 20 + one excluded row each
    pos = stale[:, 0]
    store.write(torch.arange(400), unit(400, 8, seed=9), 1)  # a refresh: the search follows the store
    fresh = (q @ store.embeddings().T)
    s = AnceSampler(5, top=20)
    d = s.sample(q, batch(E, pos.tolist()), store)
    top = fresh.masked_fill(torch.zeros_like(fresh, dtype=torch.bool).scatter(1, pos[:, None], True), -9).topk(20, 1).indices
    for r in range(3):
        got = set(d.ids[r][~d.mask[r]].tolist())
        assert len(got) == 5 and got <= set(top[r].tolist()) and int(pos[r]) not in got
