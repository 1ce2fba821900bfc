"""``--report-to tensorboard,wandb,mlflow``: the training log also goes where people look (Hugging Face
Trainer's names; several allowed, comma-separated; ``none``, the default, reports nowhere else).

What is logged, at the step it belongs to: every row of ``RUN/train_log.jsonl`` (the trainer writes it; it
stays the complete record), nested fields flattened with ``/``: loss, lr, grad_norm (and the towers' norms),
seconds, the work counters, ``phases/<phase>`` seconds, the sampler's and refreshers' statistics (staleness,
drawn_age, nystrom_*), ``diagnostics/<name>`` (``--diagnose-every``) and ``eval/<metric>`` for every
evaluation during training. Strings and empty values (a skipped step's loss) are left out. The zero-shot
metrics (``RUN/zero_shot.json``) are logged as ``zero_shot/<metric>`` at step 0, and the final metrics as
``final/<key>`` (W&B: the run summary) when the trainer passes them (``on_end``, below). The resolved
configuration (``trainer.cfg.to_dict()``) goes to each backend as hyper-parameters; the run is named after
the run folder.

Where each backend writes:

- tensorboard: event files in ``RUN/tensorboard/`` (``tensorboard --logdir RUN/tensorboard``, or a folder
  above several runs); the configuration as the text ``config`` and in the HParams dashboard.
- wandb: ``wandb.init(project=$WANDB_PROJECT or "negminer", name=<run folder>)``; its local files under
  ``RUN/wandb/`` unless ``WANDB_DIR`` is set. ``WANDB_MODE=offline`` writes only there (``wandb sync``
  uploads later). The console is not captured (the JSONL log has it all).
- mlflow: ``$MLFLOW_TRACKING_URI`` when set, else a file store ``RUN/mlruns`` (``mlflow ui
  --backend-store-uri RUN/mlruns``; MLflow 3 refuses file stores unless ``MLFLOW_ALLOW_FILE_STORE=true``,
  which is set for that default); experiment ``$MLFLOW_EXPERIMENT_NAME`` or "negminer". MLflow names allow
  ``[/\\w.\\- :]`` only: ``@`` becomes ``_at_`` (``eval/ndcg_at_10``), other characters ``_``.

A resumed run continues the same W&B and MLflow runs (their ids are kept in ``RUN/report_to.json``) and
appends event files to ``RUN/tensorboard``.

Names are checked when the hooks are built (``default_hooks``), before any work: an unknown name or a missing
package is a one-line ``ConfigError``. Backends start on the first optimiser step (``RUN`` exists by then);
one that cannot start (W&B not logged in, an unreachable tracking server) is a ``ConfigError`` too. A backend
that fails later is warned about once and turned off: the training goes on and the JSONL log is complete.

Timing: everything happens in ``on_step`` (not counted as training time), never in ``on_step_start``. Rows are
read back from the JSONL file as the trainer appends them, so a row reaches the backends at the next step's
``on_step`` (the last one at the final checkpoint): exactly what the file holds, evaluations included.

The end: ``Trainer.run`` calls ``on_end(trainer, metrics)`` after the final evaluation; the final metrics are
logged, then the writers closed (TensorBoard flushed and closed, W&B finished, the MLflow run ended FINISHED).
A run that stops on an error or a signal calls ``on_end(trainer, None)``: closed as failed (W&B exit code 1,
MLflow KILLED).
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import re
import sys
import time
import weakref
from pathlib import Path

from negminer.errors import ConfigError

# name -> (module imported, package to install)
BACKENDS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
            "mlflow": ("mlflow", "mlflow-skinny")}
IDS_FILE = "report_to.json"


def parse_report_to(value) -> list[str]:
    """``--report-to`` as a list of backend names (``[]`` for none); ConfigError for an unknown name, ``none``
    with others, or a backend whose package is not installed."""
    items = value if isinstance(value, (list, tuple)) else str(value or "").split(",")
    names = []
    for raw in items:
        name = str(raw).strip().lower()
        if name and name not in names:
            names.append(name)
    bad = [n for n in names if n not in BACKENDS and n != "none"]
    if bad:
        raise ConfigError(f"--report-to {bad[0]}: unknown name; choose from {', '.join(BACKENDS)} (comma-separated) "
                          "or none")
    if "none" in names:
        if len(names) > 1:
            raise ConfigError(f"--report-to {','.join(names)}: none cannot be combined with other names")
        return []
    for n in names:
        module, package = BACKENDS[n]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"--report-to {n} needs the package {package}: pip install negminer[report]")
    return names


def report_hook(value):
    """The hook for ``--report-to`` (None for none); the names are checked now."""
    names = parse_report_to(value)
    return ReportHook(names) if names else None


def scalars(row: dict, prefix: str = "") -> dict:
    """The numeric fields of a log row, nested dicts flattened with ``/``; ``step`` itself is left out."""
    out = {}
    for k, v in row.items():
        if isinstance(v, dict):
            out.update(scalars(v, f"{prefix}{k}/"))
        elif k == "step" and not prefix:
            continue
        elif isinstance(v, bool):
            out[prefix + k] = float(v)
        elif isinstance(v, (int, float)):
            out[prefix + k] = float(v)
    return out


class ReportHook:
    """Sends the training log to TensorBoard, W&B and MLflow (the module docstring says what and where)."""

    def __init__(self, names):
        self.names = list(names)
        self.backends: list = []
        self.run_dir: Path | None = None
        self.offset = 0
        self.opened = self.closed = False
        self.trainer = lambda: None  # a weak reference to the trainer this hook reports

    # ---- hook events ----------------------------------------------------------------------
    def on_step(self, trainer, step: int):
        self._sync(trainer)
        return None

    def on_save(self, trainer) -> None:
        if not trainer.dist.main or self._bind(trainer).closed:
            return
        self._sync(trainer)

    def on_end(self, trainer, metrics=None) -> None:
        """The run's end: ``metrics`` (``finish``'s) logged as ``final/...``, then the writers closed; None:
        the run failed."""
        if not trainer.dist.main or self._bind(trainer).closed:
            return
        self._sync(trainer)
        if metrics is not None:
            final = scalars({k: v for k, v in metrics.items() if k != "zero_shot"}, "final/")
            self._each("log_final", final, trainer.step)
        self.close(ok=metrics is not None)

    # ---- the work -------------------------------------------------------------------------
    def _bind(self, trainer) -> "ReportHook":
        """A hook given to another trainer (a notebook's second run) closes the first run and starts anew."""
        if self.trainer() is not trainer:
            if self.opened:
                self.close()
            self.__init__(self.names)
            self.trainer = weakref.ref(trainer)
        return self

    def _sync(self, trainer) -> None:
        if not trainer.dist.main or self._bind(trainer).closed:
            return
        if not self.opened:
            self._open(trainer)
        self._drain()

    def _drain(self) -> None:
        """Forward the rows appended to train_log.jsonl since the last call (complete lines only)."""
        path = self.run_dir / "train_log.jsonl"
        try:
            with open(path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:  # not a row this hook can read: the file keeps it
                continue
            values = scalars(row)
            if values and "step" in row:
                self._each("log", values, int(row["step"]))

    def _open(self, trainer) -> None:
        self.opened = True
        self.run_dir = Path(trainer.run_dir)
        log = self.run_dir / "train_log.jsonl"
        self.offset = log.stat().st_size if log.exists() else 0  # rows of a resumed run's past: reported then
        resumed = trainer.last_checkpoint_step is not None
        saved = {}
        if resumed and (self.run_dir / IDS_FILE).exists():
            try:
                saved = json.loads((self.run_dir / IDS_FILE).read_text())
            except (OSError, ValueError):
                saved = {}
        cfg = trainer.cfg.to_dict()
        ctx = {"run_dir": self.run_dir, "name": self.run_dir.resolve().name, "config": cfg,
               "quiet": trainer.cfg.quiet}
        for name in self.names:
            backend = _CLASSES[name]()
            try:
                backend.open(ctx, saved.get(name) if resumed else None)
            except ConfigError:
                self.close(ok=False)
                raise
            except Exception as e:  # noqa: BLE001  (a backend's own errors: one line, its name first)
                self.close(ok=False)
                raise ConfigError(f"--report-to {name}: cannot start ({type(e).__name__}: "
                                  f"{_first_line(e)}){backend.hint}") from None
            self.backends.append(backend)
        atexit.register(self._at_exit)  # after the backends' own (W&B's): runs before them
        ids = {**saved, **{b.name: b.ident() for b in self.backends if b.ident()}}
        if ids:
            from negminer.fileio import atomic_write_json

            try:
                atomic_write_json(self.run_dir / IDS_FILE, ids)
            except OSError:
                pass  # only resuming into the same runs needs it
        if not resumed and (self.run_dir / "zero_shot.json").exists():
            zs = scalars(json.loads((self.run_dir / "zero_shot.json").read_text()), "zero_shot/")
            if zs:
                self._each("log", zs, 0)

    def _each(self, method: str, values: dict, step: int) -> None:
        for b in list(self.backends):
            try:
                getattr(b, method)(values, step)
            except Exception as e:  # noqa: BLE001  (the JSONL log is the record: warn, go on without it)
                print(f"negminer: warning: --report-to {b.name}: logging failed ({type(e).__name__}: "
                      f"{_first_line(e)}); it is off for the rest of the run (train_log.jsonl is complete)",
                      file=sys.stderr)
                self.backends.remove(b)
                _quietly(b.close, False)

    def close(self, ok: bool = True) -> None:
        """Forward the last rows and close every backend (idempotent)."""
        if self.closed:
            return
        if self.opened and self.run_dir is not None:
            _quietly(self._drain)
        self.closed = True
        for b in self.backends:
            _quietly(b.close, ok)
        self.backends = []
        atexit.unregister(self._at_exit)

    def _at_exit(self) -> None:
        """The process exits before the run's end (an error, a signal): closed as failed."""
        self.close(ok=False)


# ---- the backends -----------------------------------------------------------------------------
class _TensorBoard:
    name, hint = "tensorboard", ""

    def open(self, ctx, saved) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(ctx["run_dir"] / "tensorboard"), flush_secs=30)
        cfg = ctx["config"]
        self.writer.add_text("config", "```\n" + json.dumps(cfg, indent=2, default=str) + "\n```")
        try:  # the HParams dashboard, in the same folder (add_hparams would make a sub-run)
            from torch.utils.tensorboard.summary import hparams

            hp = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v, default=str)
                  for k, v in cfg.items()}
            for summary in hparams(hp, {}):
                self.writer._get_file_writer().add_summary(summary)
        except Exception:  # noqa: BLE001  (a torch without it: the text is there)
            pass

    def ident(self):
        return None

    def log(self, values: dict, step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    log_final = log

    def close(self, ok: bool) -> None:
        self.writer.flush()
        self.writer.close()


class _Wandb:
    name, hint = "wandb", "; log in with `wandb login`, or set WANDB_MODE=offline"

    def open(self, ctx, saved) -> None:
        import wandb

        kw = {"project": os.environ.get("WANDB_PROJECT") or "negminer", "name": ctx["name"],
              "config": ctx["config"], "reinit": _wandb_reinit(wandb.__version__),
              "settings": wandb.Settings(console="off", silent=bool(ctx["quiet"]))}
        if not os.environ.get("WANDB_DIR"):
            kw["dir"] = str(ctx["run_dir"])
        if saved and saved.get("id"):
            kw.update(id=saved["id"], resume="allow")
        self.run = wandb.init(**kw)

    def ident(self):
        return {"id": self.run.id}

    def log(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def log_final(self, values: dict, step: int) -> None:
        self.run.summary.update(values)

    def close(self, ok: bool) -> None:
        self.run.finish(exit_code=0 if ok else 1)


class _Mlflow:
    name, hint = "mlflow", "; check MLFLOW_TRACKING_URI"

    def open(self, ctx, saved) -> None:
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = (ctx["run_dir"] / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses file stores otherwise
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client, self.uri = MlflowClient(tracking_uri=uri), uri
        self.run_id, have = None, {}
        if saved and saved.get("run_id") and saved.get("tracking_uri") == uri:
            try:
                run = self.client.get_run(saved["run_id"])
                self.run_id, have = run.info.run_id, dict(run.data.params)
                self.client.update_run(self.run_id, status="RUNNING")
            except Exception:  # noqa: BLE001  (gone: a new run)
                self.run_id = None
        if self.run_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "negminer"
            exp = self.client.get_experiment_by_name(name)
            eid = exp.experiment_id if exp is not None else self.client.create_experiment(name)
            run = self.client.create_run(eid, run_name=ctx["name"],
                                         tags={"negminer.run_dir": str(ctx["run_dir"].resolve())})
            self.run_id = run.info.run_id
        params = [Param(_mlflow_key(k), str(v)[:6000]) for k, v in ctx["config"].items()
                  if _mlflow_key(k) not in have]  # params cannot change: a resumed run keeps its first values
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def ident(self):
        return {"run_id": self.run_id, "tracking_uri": self.uri}

    def log(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        metrics = [Metric(_mlflow_key(k), v, ts, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    log_final = log

    def close(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if ok else "KILLED")


_CLASSES = {"tensorboard": _TensorBoard, "wandb": _Wandb, "mlflow": _Mlflow}


def _mlflow_key(key: str) -> str:
    return re.sub(r"[^/\w.\- :]", "_", key.replace("@", "_at_"))


def _wandb_reinit(version: str):
    """A new run beside any other of this process ("create_new", wandb >= 0.19.10); True before that."""
    parts = [int(p) for p in re.findall(r"\d+", version)[:3]] + [0, 0, 0]
    return "create_new" if tuple(parts[:3]) >= (0, 19, 10) else True


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "no message"


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001  (closing: nothing left to tell)
        pass
