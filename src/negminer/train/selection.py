"""Model selection: evaluations during training score the dev split (data/splits.py), the best model by
``--select-metric`` is written as ``RUN/model`` (the last one as ``RUN/model-last``), and ``--patience P``
stops training after P evaluations without improvement. The final metrics are the best model's on the
evaluation split (test), as when no selection happens.
"""

from __future__ import annotations

from negminer.errors import ConfigError
from negminer.eval.evaluate import XMC_KEYS
from negminer.eval.metrics import METRIC_KEYS


def select_metric(name: str, multilabel: bool) -> str:
    if name == "auto":
        return "xmc_p@1" if multilabel else "ndcg@10"
    ok = [k for k in METRIC_KEYS if k != "num_queries"] + ([k for k in XMC_KEYS if k != "xmc_queries"] if multilabel else [])
    if name not in ok:  # ("none" never gets here: no selection is made)
        raise ConfigError(f"--select-metric {name!r}: must be one of {', '.join(ok)}")
    return name


class Selection:
    """Tracks the best dev score, its step and the evaluations since it (checkpointed with the trainer)."""

    def __init__(self, metric: str, patience: int):
        self.metric, self.patience = metric, patience
        self.best: float | None = None
        self.best_step: int | None = None
        self.since = 0
        self.last_step: int | None = None

    def update(self, metrics: dict, step: int) -> bool:
        """Record a dev evaluation; True when it is the best so far (ties keep the earlier model)."""
        v = float(metrics[self.metric])
        self.last_step = step
        if self.best is None or v > self.best:
            self.best, self.best_step, self.since = v, step, 0
            return True
        self.since += 1
        return False

    def exhausted(self) -> bool:
        return bool(self.patience) and self.since >= self.patience

    def state(self) -> dict:
        return {"metric": self.metric, "best": self.best, "best_step": self.best_step, "since": self.since,
                "last_step": self.last_step}

    def load(self, st: dict) -> None:
        self.best, self.best_step, self.since = st.get("best"), st.get("best_step"), st.get("since", 0)
        self.last_step = st.get("last_step")
