"""Fixtures for the encoder tests: short texts and one MiniLM / one static model per session (read-only)."""

from __future__ import annotations

import pytest

from negminer.encoders import build_encoder

TEXTS = ["dual encoders score by dot product", "hard negatives carry the partition function", "x", "",
         "a longer sentence about retrieval models that are trained on CPU cores " * 3]


@pytest.fixture
def texts() -> list[str]:
    return list(TEXTS)


@pytest.fixture(scope="session")
def minilm():
    return build_encoder("minilm", query_max_length=8, target_max_length=16)


@pytest.fixture(scope="session")
def static():
    return build_encoder("static", query_max_length=8, target_max_length=16)
