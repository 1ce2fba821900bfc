"""Data: corpus of targets, queries, relevance judgements; readers per format."""

from negminer.data.dataset import Dataset

__all__ = ["Dataset"]
