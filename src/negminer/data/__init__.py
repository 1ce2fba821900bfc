"""Data: corpus of targets, queries, relevance judgements; readers per format."""

from negminer.data.dataset import Dataset
from negminer.data.load import load_dataset

__all__ = ["Dataset", "load_dataset"]
