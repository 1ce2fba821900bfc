"""HF transformer tower: masked mean pooling, CLS pooling, padding invariance, max lengths."""

from __future__ import annotations

import torch

from negminer.encoders import build_encoder


def test_mean_pooling_is_masked_mean(minilm, texts):
    tower = minilm.target_tower
    f = minilm.tokenize_targets(texts)
    assert (f["attention_mask"] == 0).any()  # some rows are padded
    with torch.no_grad():
        hidden = tower.model(**f).last_hidden_state
        got = tower(f)
    for i in range(len(texts)):
        keep = f["attention_mask"][i].bool()
        assert torch.allclose(got[i], hidden[i][keep].mean(0), atol=1e-5)


def test_cls_pooling(minilm, texts):
    cls = build_encoder("minilm", pooling="cls", normalize=False)
    f = cls.tokenize_targets(texts[:2])
    with torch.no_grad():
        hidden = cls.target_tower.model(**f).last_hidden_state
    assert torch.allclose(cls.encode_targets(texts[:2]), hidden[:, 0], atol=1e-5)
    assert not torch.allclose(cls.encode_targets(texts[:1]), minilm.encode_targets(texts[:1]), atol=1e-2)


def test_query_and_target_max_length(minilm):
    long = ["word " * 100, "short"]
    assert minilm.tokenize_queries(long)["input_ids"].shape == (2, 8)
    assert minilm.tokenize_targets(long)["input_ids"].shape == (2, 16)
    assert build_encoder("minilm").tokenize_queries(long)["input_ids"].shape == (2, 64)  # default
