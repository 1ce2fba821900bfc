"""Shared fixtures: a tiny BEIR-layout dataset and the path of ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinydata import write_tiny_beir

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

@pytest.fixture
def tiny_beir(tmp_path) -> Path:
    return write_tiny_beir(tmp_path / "tiny")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (the shared/ folder beside the repo)")
    return SHARED_DATA
