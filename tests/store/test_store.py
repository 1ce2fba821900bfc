import numpy as np
import pytest
import torch

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
    assert s.oldest(3).tolist() == [1, 3, 4]  # never-encoded first, by row
    back = TargetStore(s.ids, texts, 4, dtype=dtype)
    back.load_state_tensors(s.state_tensors(), s.target_encodes)
    assert torch.equal(back.embeddings(), s.embeddings()) and torch.equal(back.age, s.age)
    if mmap:
        on_disk = np.load(tmp_path / "e.npy", mmap_mode="r")
        assert on_disk.shape == (10, 4)


def test_staleness():
    s = TargetStore(["a", "b"], ["a", "b"], 2)
    s.write([0, 1], torch.tensor([[1.0, 0.0], [0.0, 2.0]]), 0)
    fresh = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    assert s.staleness([0, 1], fresh) == pytest.approx((1 / 2 + 0) / 2)
