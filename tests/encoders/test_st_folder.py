"""The saved folder is the model that was trained (#27): ONE sentence-transformers folder in which
``encode_query`` gives our query embeddings and ``encode_document`` (and plain ``encode``) our target
embeddings, each side truncated at its own max length, for shared and separate towers, HF and static;
``DualEncoder.load`` / ``build_encoder`` restore the same model from it."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: the models are local folders

from sentence_transformers import SentenceTransformer  # noqa: E402

from negminer.encoders import DualEncoder, build_encoder  # noqa: E402

WORDS = "dual encoders learn from hard negatives mined among the targets of every query in the batch".split()


def _text(seed: int, n: int = 40) -> str:
    return " ".join(WORDS[(seed * 5 + 3 * i) % len(WORDS)] + ("s" if i % 7 == seed % 7 else "") for i in range(n))


QUERIES = [_text(i) for i in range(6)] + ["short query"]
TARGETS = [_text(10 + i) for i in range(6)] + ["short target"]


def _perturb(tower) -> None:
    """Make the query tower differ from the target tower, so that a swapped route would fail."""
    emb = tower.embedding if hasattr(tower, "embedding") else tower.model.get_input_embeddings()
    with torch.no_grad():
        emb.weight.add_(0.05 * torch.randn_like(emb.weight))


def _big_weight_files(path) -> int:
    return sum(1 for p in path.rglob("*.safetensors") if p.stat().st_size > 1_000_000)


def _check(m: DualEncoder, path, normalize: bool = True) -> None:
    q, t = m.encode_queries(QUERIES), m.encode_targets(TARGETS)
    st = SentenceTransformer(str(path), device="cpu")
    for ours, theirs in ((q, st.encode_query(QUERIES)), (t, st.encode_document(TARGETS)),
                         (t, st.encode(TARGETS))):  # plain encode: the document route, the target side
        theirs = torch.from_numpy(theirs)
        assert theirs.shape == ours.shape and torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
    norms = torch.from_numpy(st.encode_query(QUERIES)).norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5) == normalize


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "separate"])
@pytest.mark.parametrize("spec", ["static", "minilm"])
def test_one_folder_encode_query_and_document(tmp_path, spec, shared):
    torch.manual_seed(0)
    m = build_encoder(spec, shared=shared, query_max_length=8, target_max_length=12, temperature=0.07)
    if not shared:
        _perturb(m.query_tower)
    # the texts are longer than both lengths: the query side's own truncation shows
    assert not torch.allclose(m.encode_queries(QUERIES), m.encode_targets(QUERIES), atol=1e-3)
    m.save(tmp_path / "m")
    _check(m, tmp_path / "m")
    # the weights of a shared tower are stored once
    assert _big_weight_files(tmp_path / "m") == (1 if shared else 2)
    if not shared:  # each tower is still a sentence-transformers model of its own
        for side, encode, texts in (("query", m.encode_queries, QUERIES), ("target", m.encode_targets, TARGETS)):
            one = torch.from_numpy(SentenceTransformer(str(tmp_path / "m" / side), device="cpu").encode(texts))
            assert torch.allclose(encode(texts), one, atol=1e-5)
    # negminer restores the same model (towers, settings, temperature), by load and by spec
    for back in (DualEncoder.load(tmp_path / "m"), build_encoder(str(tmp_path / "m"))):
        assert back.shared == shared and back.normalize and type(back.target_tower) is type(m.target_tower)
        assert (back.query_max_length, back.target_max_length) == (8, 12)
        assert back.temperature == pytest.approx(0.07) and back.spec in (spec, str(tmp_path / "m"))
        assert torch.allclose(back.encode_queries(QUERIES), m.encode_queries(QUERIES), atol=1e-6)
        assert torch.allclose(back.encode_targets(TARGETS), m.encode_targets(TARGETS), atol=1e-6)
    meta = json.loads((tmp_path / "m" / "negminer.json").read_text())
    assert meta["shared"] == shared and (meta["query_max_length"], meta["target_max_length"]) == (8, 12)


@pytest.mark.parametrize("lengths", [(12, 8), (10, 10)], ids=["query-longer", "equal"])
@pytest.mark.parametrize("normalize", [True, False])
def test_static_shared_lengths(tmp_path, lengths, normalize):
    """Query longer than target, or equal lengths (a plain model then, no Router); with or without Normalize."""
    m = build_encoder("static", normalize=normalize, query_max_length=lengths[0], target_max_length=lengths[1])
    m.save(tmp_path / "m")
    _check(m, tmp_path / "m", normalize)
    modules = json.loads((tmp_path / "m" / "modules.json").read_text())
    assert modules[0]["type"].endswith("Router") == (lengths[0] != lengths[1])
    assert _big_weight_files(tmp_path / "m") == 1
    back = DualEncoder.load(tmp_path / "m")
    assert torch.equal(back.encode_queries(QUERIES), m.encode_queries(QUERIES))
    assert torch.equal(back.encode_targets(TARGETS), m.encode_targets(TARGETS))


def test_minilm_shared_query_longer(tmp_path):
    """A shared transformer with a query length above the target one, without Normalize."""
    m = build_encoder("minilm", normalize=False, query_max_length=16, target_max_length=8)
    m.save(tmp_path / "m")
    _check(m, tmp_path / "m", normalize=False)
    assert _big_weight_files(tmp_path / "m") == 1
