"""Hooks: tools that look at training without the loop importing them; the caller passes them in.

A hook is any object with some of these events (the trainer calls those it has):

    on_step_start(trainer, step)          before step ``step`` (0-based), inside its timed region
    on_step(trainer, step) -> dict|None   after each optimiser step (``step`` counts the steps done); a
                                          returned dict is merged into that step's log row (not timed)
    on_save(trainer)                      before each checkpoint

Evaluation and diagnostics time is not counted as training time. ``default_hooks(cfg)`` maps options
to hooks (``--diagnose-every``), importing each tool only when asked for; the CLI passes them to the
trainer, as a notebook would.
"""

from __future__ import annotations


class DiagnosticsHook:
    """Sampler diagnostics (diagnostics.py) every ``every`` steps or at the steps in ``at``.

    With a full refresh every R steps (exact, ance), periodic diagnostics are shifted by R // 2
    so that they never measure an index refreshed on the step before."""

    def __init__(self, every: int = 0, at=(), batches: int = 1):
        self.every, self.at, self.batches = every, set(at), batches

    def due(self, trainer, step: int) -> bool:
        if step in self.at:
            return True
        if not self.every:
            return False
        period = next((r.every for r in getattr(trainer, "refreshers", ()) if r.name == "full"), 0)
        return step % self.every == (period // 2) % self.every

    def on_step(self, trainer, step: int):
        if not self.due(trainer, step):
            return None
        from negminer.diagnostics import diagnose_trainer

        rows = [diagnose_trainer(trainer, step + i) for i in range(self.batches)]
        return {"diagnostics": {k: round(sum(r[k] for r in rows) / len(rows), 6) for k in rows[0]}}


def default_hooks(cfg) -> list:
    """The hooks the options ask for: ``--diagnose-every``, ``--report-to`` (report.py; its names are checked
    here, before any work: ConfigError)."""
    hooks = [DiagnosticsHook(every=cfg.diagnose_every)] if cfg.diagnose_every else []
    if (cfg.report_to or "none").strip().lower() != "none":
        from negminer.report import report_hook

        hook = report_hook(cfg.report_to)
        if hook is not None:
            hooks.append(hook)
    return hooks
