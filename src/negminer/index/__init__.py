"""Indexes over the target store (built on its embeddings, kept in step with its writes)."""

from negminer.index.tree import KMeansTree

__all__ = ["KMeansTree"]
