"""Batching: which queries share a batch."""

from negminer.batching.random import RandomBatcher

__all__ = ["RandomBatcher"]
