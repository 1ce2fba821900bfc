"""Memory strategies: how a large set of with-gradient embeddings is made to fit."""

from negminer.memory.cached_targets import CachedEncoding, encode_cached

__all__ = ["CachedEncoding", "encode_cached"]
