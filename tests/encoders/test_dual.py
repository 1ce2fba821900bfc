"""DualEncoder: shapes, normalisation, encode order and mode, temperature, towers, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from negminer.encoders import build_encoder
from negminer.encoders.dual import MAX_SCALE
from negminer.errors import ConfigError


@pytest.mark.parametrize("normalize", [True, False])
def test_embed_shapes_grad_and_normalisation(texts, normalize):
    m = build_encoder("static", normalize=normalize)
    q = m.embed_queries(m.tokenize_queries(texts[:3]))
    t = m.embed_targets(m.tokenize_targets(texts[:2]))
    assert q.shape == (3, 384) and t.shape == (2, 384) and q.requires_grad and t.requires_grad
    norms = torch.cat([q, t]).norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5) == normalize


def test_encode_order_dtype_and_mode(minilm, texts):
    batched = minilm.encode_targets(texts, batch_size=2)  # sorted by length inside, unsorted on return
    single = torch.cat([minilm.encode_targets([t]) for t in texts])
    assert batched.dtype == torch.float32 and batched.device.type == "cpu" and not batched.requires_grad
    assert torch.allclose(batched, single, atol=1e-5)
    assert minilm.encode_queries([]).shape == (0, 384)
    for mode in (True, False):
        minilm.train(mode)
        minilm.encode_queries(texts[:2])
        assert minilm.training == mode and minilm.query_tower.model.training == mode
    # dropout is off inside encode: two calls in training mode agree
    minilm.train(True)
    assert torch.equal(minilm.encode_queries(texts[:2]), minilm.encode_queries(texts[:2]))
    minilm.eval()


def test_fixed_and_learned_temperature():
    fixed = build_encoder("static", temperature=0.05)
    assert fixed.logit_scale().item() == pytest.approx(20.0, rel=1e-6) and fixed.temperature == pytest.approx(0.05)
    assert all(p is not fixed.log_scale for p in fixed.parameters()) and "log_scale" in fixed.state_dict()
    learned = build_encoder("static", temperature=0.1, learn_temperature=True)
    assert any(p is learned.log_scale for p in learned.parameters())
    learned.logit_scale().backward()
    assert learned.log_scale.grad.item() == pytest.approx(10.0, rel=1e-5)  # d exp(s) / ds
    with torch.no_grad():
        learned.log_scale.fill_(10.0)
    assert learned.logit_scale().item() == pytest.approx(MAX_SCALE) and learned.temperature == pytest.approx(0.01)
    for bad in (dict(temperature=0.0), dict(temperature=-1.0), dict(temperature=0.001, learn_temperature=True),
                dict(query_max_length=0)):
        with pytest.raises(ConfigError):
            build_encoder("static", **bad)


def test_separate_towers_diverge_after_a_step(texts):
    m = build_encoder("static", shared=False)
    assert m.query_tower is not m.target_tower
    assert m.query_tower.embedding.weight.data_ptr() != m.target_tower.embedding.weight.data_ptr()
    before = m.encode_targets(texts)
    assert torch.allclose(before, m.encode_queries(texts))  # two copies of the same weights
    opt = torch.optim.SGD(m.query_tower.parameters(), lr=1.0)
    m.embed_queries(m.tokenize_queries(texts))[:, 0].sum().backward()
    assert m.target_tower.embedding.weight.grad is None
    opt.step()
    assert torch.equal(m.encode_targets(texts), before)
    assert not torch.allclose(m.encode_queries(texts)[:3], before[:3], atol=1e-4)


def test_shared_tower_is_one_module(texts):
    m = build_encoder("static")
    assert m.shared and m.target_tower is m.query_tower
    assert not any(k.startswith("target_tower.") for k in m.state_dict())
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    before = m.encode_targets(texts)
    m.embed_queries(m.tokenize_queries(texts))[:, 0].sum().backward()
    opt.step()
    assert not torch.allclose(m.encode_targets(texts)[:3], before[:3], atol=1e-4)


@pytest.mark.parametrize("shared", [True, False])
def test_checkpoint_state_round_trip(tmp_path, texts, shared):
    """What the trainer does: save_file(state) / load_file, and safetensors' save_model / load_model."""
    m = build_encoder("static", shared=shared, learn_temperature=True)
    with torch.no_grad():
        m.query_tower.embedding.weight.mul_(1.5).add_(0.01)
        m.log_scale.fill_(math.log(30.0))
    save_file(dict(m.state_dict()), str(tmp_path / "plain.safetensors"))  # no aliased tensors
    save_file(m.checkpoint_state(), str(tmp_path / "ck.safetensors"))
    save_model(m, str(tmp_path / "model.safetensors"))
    keys = set(load_file(str(tmp_path / "ck.safetensors")))
    assert any(k.startswith("target_tower.") for k in keys) != shared and "log_scale" in keys
    for load in ("checkpoint", "model"):
        fresh = build_encoder("static", shared=shared, learn_temperature=True)
        if load == "checkpoint":
            fresh.load_checkpoint_state(load_file(str(tmp_path / "ck.safetensors")))
        else:
            missing, unexpected = load_model(fresh, str(tmp_path / "model.safetensors"), strict=False)
            assert not missing and not unexpected
        assert fresh.logit_scale().item() == pytest.approx(30.0, rel=1e-5)
        assert torch.allclose(fresh.encode_queries(texts), m.encode_queries(texts), atol=1e-6)
        assert torch.allclose(fresh.encode_targets(texts), m.encode_targets(texts), atol=1e-6)


def test_checkpoint_state_unties_aliased_tensors():
    m = build_encoder("static", shared=False)
    m.target_tower.embedding.weight = m.query_tower.embedding.weight  # tied on purpose
    state = m.checkpoint_state()
    assert state["query_tower.embedding.weight"].data_ptr() != state["target_tower.embedding.weight"].data_ptr()
    assert torch.equal(state["query_tower.embedding.weight"], state["target_tower.embedding.weight"])
