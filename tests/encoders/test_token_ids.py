"""Pre-tokenised targets (what the target store keeps) give the same inputs and embeddings as texts."""

from __future__ import annotations

import pytest
import torch

from negminer.store import TargetStore


@pytest.mark.parametrize("name", ["minilm", "static"])
def test_store_token_table_matches_text_path(name, texts, request):
    m = request.getfixturevalue(name)
    store = TargetStore([str(i) for i in range(len(texts))], texts, m.dim)
    rows = [4, 0, 3, 2]  # mixed lengths, one empty text, one truncated at the max length
    feats, ref = store.features(rows, m), m.tokenize_targets([texts[r] for r in rows])
    assert torch.equal(feats["input_ids"], ref["input_ids"])
    if "attention_mask" in ref:
        assert torch.equal(feats["attention_mask"], ref["attention_mask"])
    with torch.no_grad():
        assert torch.allclose(m.embed_targets(feats), m.embed_targets(ref), atol=1e-6)
    assert max(len(x) for x in store.token_ids(rows, m)) <= m.target_max_length
    assert torch.allclose(store.embed(range(len(texts)), m, batch_size=2), m.encode_targets(texts), atol=1e-5)
