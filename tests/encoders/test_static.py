"""Static tower: the same vectors as sentence-transformers' StaticEmbedding, initialised from MiniLM."""

from __future__ import annotations

import torch
from sentence_transformers.sentence_transformer.modules import StaticEmbedding
from tokenizers import Tokenizer

from negminer.encoders import build_encoder, default_model_path


def test_matches_sentence_transformers_static_embedding(static, minilm, texts):
    tower = static.target_tower
    st = StaticEmbedding(Tokenizer.from_file(f"{default_model_path()}/tokenizer.json"),
                         embedding_weights=tower.embedding.weight.detach().clone())
    short = [t for t in texts if len(t.split()) < 10]  # ST's module does not truncate on its own
    ours = tower(tower.tokenize(short, 512))
    with torch.no_grad():
        theirs = st(st.preprocess(short))["sentence_embedding"]
    assert torch.allclose(ours, theirs, atol=1e-6)
    # initialised from MiniLM's input token embeddings, no special tokens
    ids = tower.tokenize(["retrieval"], 16)["input_ids"]
    emb = minilm.target_tower.model.get_input_embeddings().weight
    assert torch.allclose(tower(tower.tokenize(["retrieval"], 16)).squeeze(0), emb[ids].mean(0), atol=1e-6)
    assert 101 not in ids.tolist() and 102 not in ids.tolist()  # [CLS], [SEP]


def test_truncation_and_empty_text(static):
    f = static.tokenize_queries(["word " * 50, "", "two words"])
    assert f["offsets"].tolist() == [0, 8, 8] and f["input_ids"].numel() == 8 + 0 + 2
    e = static.encode_queries(["", "two words"])
    assert torch.isfinite(e).all() and e[0].abs().sum() == 0  # empty bag: zero vector, as ST
    assert static.tokenize_targets([])["offsets"].numel() == 0


def test_static_trains(texts):
    m = build_encoder("static")
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    q = m.embed_queries(m.tokenize_queries(texts[:2]))
    t = m.embed_targets(m.tokenize_targets(texts[:2]))
    loss = torch.nn.functional.cross_entropy(q @ t.T * m.logit_scale(), torch.arange(2))
    loss.backward()
    before = m.query_tower.embedding.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, m.query_tower.embedding.weight)
