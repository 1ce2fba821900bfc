"""Towers: sentence-transformers round trip, pooling, temperature, shared vs separate towers."""

import json

import pytest
import torch

from negminer.encoders import DualEncoder, build_encoder
from negminer.errors import ConfigError

TEXTS = ["dual encoders score by dot product", "hard negatives carry the partition function", "x",
         "a longer sentence about retrieval models that are trained on CPU cores"]


@pytest.fixture(scope="module")
def minilm():
    return build_encoder("minilm", target_max_length=32)


@pytest.mark.parametrize("spec", ["minilm", "static"])
@pytest.mark.parametrize("normalize", [True, False])
def test_saved_model_loads_in_sentence_transformers(tmp_path, spec, normalize):
    from sentence_transformers import SentenceTransformer

    m = build_encoder(spec, normalize=normalize, target_max_length=32)
    m.save(tmp_path / "model")
    st = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    ours = m.encode_targets(TEXTS)
    theirs = torch.tensor(st.encode(TEXTS))
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert torch.allclose(ours.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5) == normalize


def test_separate_towers_save_query_and_target(tmp_path):
    from sentence_transformers import SentenceTransformer

    m = build_encoder("static", shared=False)
    assert m.query_tower is not m.target_tower
    with torch.no_grad():
        m.query_tower.embedding.weight.mul_(2).add_(0.01)
    m.save(tmp_path / "m")
    for side, enc in (("query", m.encode_queries), ("target", m.encode_targets)):
        st = SentenceTransformer(str(tmp_path / "m" / side), device="cpu")
        assert torch.allclose(enc(TEXTS), torch.tensor(st.encode(TEXTS)), atol=1e-5)
    back = DualEncoder.load(tmp_path / "m")
    assert not back.shared and torch.allclose(back.encode_queries(TEXTS), m.encode_queries(TEXTS), atol=1e-6)


def test_separate_towers_diverge_after_a_step():
    m = build_encoder("static", shared=False)
    before = m.encode_targets(TEXTS)
    assert torch.allclose(before, m.encode_queries(TEXTS))
    opt = torch.optim.SGD(m.query_tower.parameters(), lr=1.0)
    q = m.embed_queries(m.tokenize_queries(TEXTS))
    (q[:, 0].sum()).backward()
    opt.step()
    assert torch.allclose(m.encode_targets(TEXTS), before)
    assert not torch.allclose(m.encode_queries(TEXTS), before)


def test_mean_pooling_is_masked_mean(minilm):
    tower = minilm.target_tower
    f = tower.tokenize(TEXTS, 32)
    with torch.no_grad():
        hidden = tower.model(**f).last_hidden_state
        got = tower(f)
    for i in range(len(TEXTS)):
        n = int(f["attention_mask"][i].sum())
        assert torch.allclose(got[i], hidden[i, :n].mean(0), atol=1e-5)


def test_query_and_target_max_length(minilm):
    long = ["word " * 100]
    assert minilm.tokenize_queries(long)["input_ids"].shape[1] == 32
    m = build_encoder("minilm", query_max_length=8, target_max_length=16)
    assert m.tokenize_queries(long)["input_ids"].shape[1] == 8
    assert m.tokenize_targets(long)["input_ids"].shape[1] == 16


def test_encode_keeps_input_order(minilm):
    batched = minilm.encode_targets(TEXTS, batch_size=2)
    single = torch.cat([minilm.encode_targets([t]) for t in TEXTS])
    assert torch.allclose(batched, single, atol=1e-5)


def test_learned_temperature_round_trip(tmp_path):
    m = build_encoder("static", temperature=0.1, learn_temperature=True)
    assert abs(float(m.logit_scale().detach()) - 10.0) < 1e-4
    assert any(p is m.log_scale for p in m.parameters())
    with torch.no_grad():
        m.log_scale.fill_(3.0)
    m.save(tmp_path / "m")
    back = DualEncoder.load(tmp_path / "m")
    assert abs(float(back.logit_scale().detach()) - float(m.logit_scale().detach())) < 1e-5
    assert json.loads((tmp_path / "m" / "negminer.json").read_text())["learn_temperature"] is True
    fixed = build_encoder("static", temperature=0.05)
    assert all(p is not fixed.log_scale for p in fixed.parameters())


def test_continue_from_saved_model(tmp_path):
    m = build_encoder("static", normalize=False, temperature=0.2)
    m.save(tmp_path / "m")
    again = build_encoder(str(tmp_path / "m"))
    assert again.target_tower.kind == "static" and not again.normalize and abs(again.temperature - 0.2) < 1e-6


@pytest.mark.parametrize("spec", ["nope/nowhere", "static:/no/such/dir", "hf:/no/such", "builtin:pycode"])
def test_bad_spec(spec):
    with pytest.raises(ConfigError):
        build_encoder(spec)
