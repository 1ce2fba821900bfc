"""Evaluation: exact or FAISS top-100, metrics checked against ir-measures; XMC metrics (P@k, nDCG@k,
PSP@k) checked against napkinxc."""

from negminer.eval.evaluate import evaluate
from negminer.eval.metrics import METRIC_KEYS, compute_metrics
from negminer.eval.xmc import inverse_propensity, xmc_metrics

__all__ = ["evaluate", "compute_metrics", "METRIC_KEYS", "inverse_propensity", "xmc_metrics"]
