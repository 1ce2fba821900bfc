"""Targets with identical text (after normalisation) are the same target: never negatives of each other."""

from __future__ import annotations

import hashlib
import re

_SPACE = re.compile(r"\s+")


def text_key(text: str) -> bytes:
    return hashlib.blake2b(_SPACE.sub(" ", text.strip().lower()).encode("utf-8"), digest_size=12).digest()


def duplicate_groups(texts) -> dict[int, tuple[int, ...]]:
    """row -> all rows sharing its normalised text, for rows in groups of two or more."""
    if not isinstance(texts, list):  # lazy (synthetic) corpora: skip the O(N) pass
        return {}
    by_key: dict[bytes, list[int]] = {}
    for i, t in enumerate(texts):
        by_key.setdefault(text_key(t), []).append(i)
    out = {}
    for rows in by_key.values():
        if len(rows) > 1:
            group = tuple(rows)
            for r in rows:
                out[r] = group
    return out
