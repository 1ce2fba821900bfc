"""negminer: dual-encoder training with fresh hard negatives over large target sets."""

__version__ = "0.1.0"
