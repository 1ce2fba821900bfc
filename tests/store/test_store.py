import numpy as np
import pytest
import torch

from negminer.refreshers import relative_change
from negminer.store import TargetStore


class FakeModel:
    """Token ids = character codes; a row embeds to [length, sum(ids) % 7, 1, 0.5]. Counts calls."""

    target_max_length = 64

    def __init__(self, d=4):
        self.d, self.calls, self.tokenized = d, 0, 0
        self.target_tower = self

    def target_token_ids(self, texts):
        self.tokenized += len(texts)
        return [[ord(c) for c in t][: self.target_max_length] for t in texts]

    def encode_target_ids(self, ids, batch_size=128, progress=False):
        self.calls += len(ids)
        return torch.tensor([[float(len(x)), float(sum(x) % 7), 1.0, 0.5][: self.d] for x in ids])


def want(text):
    return torch.tensor([len(text), sum(map(ord, text)) % 7, 1.0, 0.5])


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("mmap", [False, True])
def test_encode_updates_rows_ages_and_counter(tmp_path, dtype, mmap):
    texts = [f"t{i}" * (i + 1) for i in range(10)]
    s = TargetStore([str(i) for i in range(10)], texts, 4, dtype=dtype, path=tmp_path / "e.npy" if mmap else None)
    m = FakeModel()
    assert (s.age == -1).all()
    s.encode([2, 5], m, step=3)
    assert s.target_encodes == 2 and m.calls == 2
    assert s.age.tolist() == [-1, -1, 3, -1, -1, 3, -1, -1, -1, -1]
    assert torch.allclose(s.embeddings([2])[0], want(texts[2]))
    s.encode([7], m, step=4)
    assert m.tokenized == 10 and m.calls == 3  # the corpus is tokenised once, on first use
    assert torch.equal(s.embed([7, 2], m), torch.stack([want(texts[7]), want(texts[2])]))
    assert s.target_encodes == 3 and m.calls == 5 and s.age[7] == 4  # embed neither counts nor writes
    s.write([0], torch.ones(1, 4), step=4)
    assert s.target_encodes == 3 and s.age[0] == 4
    ck = tmp_path / "ck"
    ck.mkdir()
    s.save(ck)
    back = TargetStore(s.ids, texts, 4, dtype=dtype, path=tmp_path / "back.npy" if mmap else None)
    back.load(ck, s.target_encodes)
    assert torch.equal(back.embeddings(), s.embeddings()) and torch.equal(back.age, s.age)
    assert back.target_encodes == 3
    if mmap:
        on_disk = np.load(tmp_path / "e.npy", mmap_mode="r")
        assert on_disk.shape == (10, 4)


def test_staleness():
    s = TargetStore(["a", "b"], ["a", "b"], 2)
    s.write([0, 1], torch.tensor([[1.0, 0.0], [0.0, 2.0]]), 0)
    fresh = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    assert relative_change(s.embeddings([0, 1]), fresh) == pytest.approx((1 / 2 + 0) / 2)


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_chunked_scores_equal_one_product_and_the_few_row_scores(dtype):
    g = torch.Generator().manual_seed(0)
    n, d = 1000, 16
    E = torch.randn(n, d, generator=g)
    s = TargetStore([str(i) for i in range(n)], [""] * n, d, dtype=dtype)
    s.write(torch.arange(n), E, 0)
    q = torch.randn(5, d, generator=g)
    rows = torch.randperm(n, generator=g)[:300]
    for cand in (None, rows):
        parts = torch.cat([x.float().clone() for _, x in s.score_chunks(q, cand, chunk=128)], 1)
        want = (q.to(s.compute_dtype) @ s.emb[cand if cand is not None else slice(None)].to(s.compute_dtype).T).float()
        assert torch.allclose(parts, want, atol=1e-2 if dtype != "fp32" else 1e-5)
        few = s.scores(q, rows[:7])  # diagnostics only; the sampler reads the streamed chunk itself
        assert torch.allclose(few, parts[:, :7] if cand is not None else parts[:, rows[:7]], atol=1e-5, rtol=1e-3)


def test_memory_map_is_reopened_not_overwritten(tmp_path):
    s = TargetStore(["a", "b"], ["a", "b"], 2, path=tmp_path / "e.npy")
    s.write([0, 1], torch.tensor([[1.0, 2.0], [3.0, 4.0]]), 0)
    s._mm.flush()
    again = TargetStore(["a", "b"], ["a", "b"], 2, path=tmp_path / "e.npy", reopen=True)
    assert torch.equal(again.embeddings(), torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    with pytest.raises(ValueError, match="does not match|holds"):
        TargetStore(["a", "b", "c"], ["a", "b", "c"], 2, path=tmp_path / "e.npy", reopen=True)
    fresh = TargetStore(["a", "b"], ["a", "b"], 2, path=tmp_path / "e.npy")
    assert not fresh.embeddings().any()


def test_writes_are_announced():
    s = TargetStore(["a", "b", "c"], ["a", "b", "c"], 2)
    seen = []
    s.listeners.append(lambda rows, step: seen.append((rows.tolist(), step)))
    s.write([2, 0], torch.ones(2, 2), 7)
    assert seen == [([2, 0], 7)]
