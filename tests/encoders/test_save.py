"""save / load: sentence-transformers loads what we save and gives our embeddings (to 1e-5); the saved
folder as one model (Router, per-task lengths) is tested in test_st_folder.py."""

from __future__ import annotations

import json

import pytest
import torch
from sentence_transformers import SentenceTransformer

from negminer.encoders import DualEncoder, build_encoder


def _perturb(tower) -> None:
    """Make a tower differ from its twin (so the test sees which one was saved where)."""
    emb = tower.embedding if hasattr(tower, "embedding") else tower.model.get_input_embeddings()
    with torch.no_grad():
        emb.weight.add_(0.05 * torch.randn_like(emb.weight))


@pytest.mark.parametrize("spec, normalize, shared", [
    ("minilm", True, True), ("minilm", False, True), ("minilm", True, False),
    ("static", True, True), ("static", False, True), ("static", True, False), ("static", False, False)])
def test_sentence_transformers_round_trip(tmp_path, texts, spec, normalize, shared):
    torch.manual_seed(0)
    m = build_encoder(spec, shared=shared, normalize=normalize, query_max_length=6, target_max_length=12)
    if not shared:
        _perturb(m.query_tower)
    m.save(tmp_path / "m")
    sides = {"target": (tmp_path / "m", m.encode_targets)} if shared else \
        {"query": (tmp_path / "m" / "query", m.encode_queries), "target": (tmp_path / "m" / "target", m.encode_targets)}
    for path, encode in sides.values():
        st = SentenceTransformer(str(path), device="cpu")
        ours, theirs = encode(texts), torch.from_numpy(st.encode(texts))
        assert ours.dtype == torch.float32 and ours.shape == (len(texts), 384)
        assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
        norms = ours[[i for i, t in enumerate(texts) if t]].norm(dim=1)  # "" is the zero vector for static
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5) == normalize
    if not shared:
        assert not torch.allclose(m.encode_queries(texts), m.encode_targets(texts), atol=1e-3)
    # the folder itself is one model: encode_query / encode_document take the query / target side
    st = SentenceTransformer(str(tmp_path / "m"), device="cpu")
    for encode, theirs in ((m.encode_queries, st.encode_query), (m.encode_targets, st.encode_document)):
        assert torch.allclose(encode(texts), torch.from_numpy(theirs(texts)), atol=1e-5)
    # weights are safetensors only, and DualEncoder.load restores the same model
    files = [p.name for p in (tmp_path / "m").rglob("*") if p.is_file()]
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    back = DualEncoder.load(tmp_path / "m")
    assert back.shared == shared and back.normalize == normalize and type(back.target_tower) is type(m.target_tower)
    assert (back.query_max_length, back.target_max_length) == (6, 12)
    assert torch.allclose(back.encode_queries(texts), m.encode_queries(texts), atol=1e-6)
    assert torch.allclose(back.encode_targets(texts), m.encode_targets(texts), atol=1e-6)


def test_settings_file_and_overwrite(tmp_path):
    m = build_encoder("static", normalize=False, temperature=0.2, shared=False)
    m.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "negminer.json").read_text())
    assert meta["shared"] is False and meta["normalize"] is False and meta["kind"] == "static"
    assert abs(meta["temperature"] - 0.2) < 1e-6 and meta["spec"] == "static"
    shared = build_encoder("static")
    shared.save(tmp_path / "m")  # replaces the older save whole, leaves no temporary folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert not (tmp_path / "m" / "query").exists() and DualEncoder.load(tmp_path / "m").shared


def test_learned_temperature_round_trip(tmp_path):
    m = build_encoder("static", temperature=0.1, learn_temperature=True)
    with torch.no_grad():
        m.log_scale.fill_(3.0)
    m.save(tmp_path / "m")
    back = DualEncoder.load(tmp_path / "m")
    assert back.learn_temperature and any(p is back.log_scale for p in back.parameters())
    assert abs(back.logit_scale().item() - torch.e ** 3) < 1e-4 and abs(back.temperature - m.temperature) < 1e-7
    with torch.no_grad():  # beyond the clamp: the raw value is restored too
        m.log_scale.fill_(7.0)
    m.save(tmp_path / "m")
    assert DualEncoder.load(tmp_path / "m").log_scale.item() == pytest.approx(7.0)
