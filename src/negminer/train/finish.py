"""The end of a run: the saved model(s), the final evaluation and metrics.json.

Without model selection the last model is ``RUN/model``. With it (evaluations during training on dev), the
last model is also evaluated on dev, the best stays ``RUN/model``, the last is ``RUN/model-last``, and the
final metrics (test) are the best model's. ``--eval-split none``: no final evaluation.
"""

from __future__ import annotations

import sys

from negminer.eval.metrics import METRIC_KEYS
from negminer.fileio import atomic_write_json
from negminer.train.helpers import peak_rss_mb
from negminer.train.writes import writing


def finish(tr, zero_shot: dict | None) -> dict:
    cfg, main, sel = tr.cfg, tr.dist.main, tr.selection
    model = tr.model
    if sel is not None:
        if sel.last_step != tr.step:
            tr.evaluate_dev()  # the last model may be the best
        if main:
            with writing("the last model"):
                tr.model.save(tr.run_dir / "model-last")
        if sel.best_step != tr.step:
            from negminer.encoders import DualEncoder

            tr.dist.barrier()
            model = DualEncoder.load(tr.run_dir / "model", device=str(tr.device))
            model.eval()
    elif main:
        with writing("the model"):
            tr.model.save(tr.run_dir / "model")
    final = tr.evaluate(out_dir=tr.run_dir, model=model) if cfg.eval_split != "none" else {}
    if not main:  # rank 0 writes the metrics
        tr.dist.barrier()
        return {**final, "train": {"steps": tr.step, **tr.work(), "world_size": tr.dist.world}}
    metrics = dict(final)  # METRIC_KEYS, and the XMC metrics for multi-label data
    if zero_shot is not None:
        metrics["zero_shot"] = dict(zero_shot)
    stopped = tr.stopped_by or ("time_budget" if tr.step < tr.total_steps else "steps")
    metrics["train"] = {"steps": tr.step, **tr.work(), "seconds": round(tr.seconds, 2),
                        "negatives": cfg.negatives, "loss": cfg.loss, "time_budget": cfg.time_budget or None,
                        "stopped_by": stopped, "phases": tr.phases.rounded(), "peak_rss_mb": peak_rss_mb(),
                        "split": cfg.eval_split, "world_size": tr.dist.world}
    if sel is not None:
        metrics["selection"] = {"split": tr.dev_split, **sel.state(), "model": "model", "last": "model-last",
                                "patience": cfg.patience or None}
    with writing("metrics.json", intact="the checkpoint and the model are saved"):
        atomic_write_json(tr.run_dir / "metrics.json", metrics)
    skipped = tr.counters.skipped_steps
    if skipped:  # a warning: printed under --quiet too
        print(f"negminer: warning: {skipped} of {tr.step} steps were skipped (--on-nan skip): a non-finite or "
              "exploding loss or gradient", file=sys.stderr)
    tr.dist.barrier()
    return metrics


def _fmt(m: dict) -> str:
    return "  ".join(f"{k} {m[k]:.4f}" for k in METRIC_KEYS if k != "num_queries")


def format_comparison(metrics: dict) -> str:
    """Zero-shot vs trained, one line per metric; then the work, skipped steps and the model selection."""
    zs, tr = metrics.get("zero_shot"), metrics["train"]
    lines = [f"{'metric':<12}{'zero-shot':>11}{'trained':>10}{'change':>10}"] if "num_queries" in metrics else \
        ["no evaluation (--eval-split none)"]
    for k in [*METRIC_KEYS[:-1], *(k for k in metrics if k.startswith("xmc_") and k != "xmc_queries")]:
        if k not in metrics:
            continue
        if zs:
            lines.append(f"{k:<12}{zs[k]:>11.4f}{metrics[k]:>10.4f}{metrics[k] - zs[k]:>+10.4f}")
        else:
            lines.append(f"{k:<12}{'-':>11}{metrics[k]:>10.4f}")
    lines.append((f"queries: {metrics['num_queries']}   " if "num_queries" in metrics else "")
                 + f"steps: {tr['steps']}   query_encodes: {tr['query_encodes']}   "
                 f"target_encodes: {tr['target_encodes']}   train seconds: {tr['seconds']}   "
                 f"peak RSS MB: {tr['peak_rss_mb']}")
    if tr.get("skipped_steps"):
        lines.append(f"skipped steps: {tr['skipped_steps']} of {tr['steps']} (--on-nan skip)")
    sel = metrics.get("selection")
    if sel:
        lines.append(f"model: best {sel['metric']} {sel['best']:.4f} on {sel['split']} at step {sel['best_step']} "
                     f"(model/; the last step's model is model-last/)" + (
                         "; stopped by --patience" if tr.get("stopped_by") == "patience" else ""))
    return "\n".join(lines)
