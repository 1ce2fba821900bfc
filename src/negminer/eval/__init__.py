"""Evaluation: exact or FAISS top-100, metrics checked against ir-measures."""

from negminer.eval.evaluate import evaluate
from negminer.eval.metrics import METRIC_KEYS, compute_metrics

__all__ = ["evaluate", "compute_metrics", "METRIC_KEYS"]
