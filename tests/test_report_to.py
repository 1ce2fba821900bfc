"""--report-to tensorboard,wandb,mlflow (report.py): a tiny training read back from each backend equals
train_log.jsonl; names are checked before any work; the final metrics and the close wait for on_end when the
trainer raises it; a resumed run continues the same MLflow run."""

from __future__ import annotations

import glob
import json
import struct
from pathlib import Path

import pytest

from negminer.cli import main
from negminer.config import TrainConfig
from negminer.errors import ConfigError
from negminer.report import _mlflow_key, parse_report_to
from negminer.train.trainer import Trainer
from tinydata import write_tiny_beir

pytest.importorskip("tensorboard")
pytest.importorskip("wandb")
pytest.importorskip("mlflow")

TRAIN = ["--encoder", "static", "--steps", "4", "--batch-size", "8", "--quiet", "--no-zero-shot"]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_PROJECT", "WANDB_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "wandb_dir").mkdir()
    return tmp_path


def rows_of(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]


def tb_scalars(folder: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def wandb_records(path: Path) -> list:
    """The records of an offline run file (LevelDB's log format after a 7-byte W&B header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, buf, out = path.read_bytes(), 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the block's tail is padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and n == 0:
            break
        buf, pos = buf + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):  # a full record, or the last piece of one
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def test_report_to_all_three_equals_the_jsonl_log(env):
    data, run = write_tiny_beir(env / "d"), env / "run"
    assert main(["train", "--data", str(data), "--out", str(run), *TRAIN, "--eval-every", "2",
                 "--report-to", "tensorboard, wandb,mlflow"]) == 0
    rows = rows_of(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and "eval" in rows[1]

    # TensorBoard: RUN/tensorboard
    tb = tb_scalars(run / "tensorboard")
    for key in ("loss", "lr", "grad_norm", "seconds"):
        assert tb[key] == pytest.approx({r["step"]: r[key] for r in rows}, rel=1e-6, abs=1e-7), key
    assert tb["phases/optimizer"][4] == pytest.approx(rows[3]["phases"]["optimizer"], abs=1e-6)
    assert tb["eval/ndcg@10"] == pytest.approx({2: rows[1]["eval"]["ndcg@10"]})

    # W&B offline: WANDB_DIR/wandb/offline-run-*/run-<id>.wandb, finished
    (folder,) = glob.glob(str(env / "wandb_dir" / "wandb" / "offline-run-*"))
    (file,) = glob.glob(f"{folder}/run-*.wandb")
    recs = wandb_records(Path(file))
    kinds = [r.WhichOneof("record_type") for r in recs]
    assert "exit" in kinds and recs[kinds.index("exit")].exit.exit_code == 0
    history = {}
    for r in recs:
        if r.WhichOneof("record_type") == "history":
            item = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            history[int(item["_step"])] = item
    assert sorted(history) == [1, 2, 3, 4]
    for r in rows:
        for key in ("loss", "lr", "grad_norm"):
            assert history[r["step"]][key] == pytest.approx(r[key])
    assert history[2]["eval/ndcg@10"] == pytest.approx(rows[1]["eval"]["ndcg@10"])
    run_rec = recs[kinds.index("run")].run
    config = {i.key: json.loads(i.value_json) for i in run_rec.config.update}
    steps = config["steps"]["value"] if isinstance(config["steps"], dict) else config["steps"]
    assert steps == 4 and config["lr"] == pytest.approx(0.01) and run_rec.display_name == "run"
    assert json.loads((run / "report_to.json").read_text())["wandb"]["id"] == run_rec.run_id

    # MLflow: a file store RUN/mlruns, the run ended
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(run / "mlruns").as_uri())
    (mrun,) = client.search_runs([client.get_experiment_by_name("negminer").experiment_id])
    assert mrun.info.status == "FINISHED" and mrun.info.run_name == "run"
    assert mrun.data.params["steps"] == "4" and mrun.data.params["report_to"] == "tensorboard, wandb,mlflow"
    for key in ("loss", "lr", "grad_norm"):
        hist = {m.step: m.value for m in client.get_metric_history(mrun.info.run_id, key)}
        assert hist == pytest.approx({r["step"]: r[key] for r in rows}), key
    (ev,) = client.get_metric_history(mrun.info.run_id, "eval/ndcg_at_10")
    assert (ev.step, ev.value) == (2, pytest.approx(rows[1]["eval"]["ndcg@10"]))


def test_unknown_name_is_one_line_before_any_work(env, capsys):
    data, run = write_tiny_beir(env / "d"), env / "run"
    assert main(["train", "--data", str(data), "--out", str(run), *TRAIN, "--report-to", "tensorboard,comet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--report-to comet: unknown name" in err, err
    assert not run.exists()


def test_names_and_missing_packages(monkeypatch):
    assert parse_report_to("none") == [] and parse_report_to("") == []
    assert parse_report_to("TensorBoard,tensorboard , mlflow") == ["tensorboard", "mlflow"]
    with pytest.raises(ConfigError, match="none cannot be combined"):
        parse_report_to("none,wandb")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError) as e:
        parse_report_to("tensorboard,wandb")
    assert str(e.value) == "--report-to wandb needs the package wandb: pip install negminer[report]"
    assert _mlflow_key("eval/ndcg@10") == "eval/ndcg_at_10"


class EndingTrainer(Trainer):
    """A trainer that raises on_end after finish (the call report.py asks for)."""

    def run(self, resume: bool = False) -> dict:
        metrics = super().run(resume)
        self._event("on_end", metrics)
        return metrics


def test_on_end_logs_the_final_metrics_and_closes_then(env):
    from negminer.report import ReportHook

    data = write_tiny_beir(env / "d")
    hook = ReportHook(["tensorboard"])
    cfg = TrainConfig(data=str(data), out=str(env / "r"), encoder="static", steps=3, batch_size=8, quiet=True,
                      zero_shot=True, report_to="tensorboard")
    m = EndingTrainer(cfg, hooks=[hook]).run()
    assert hook.closed
    tb = tb_scalars(env / "r" / "tensorboard")
    assert tb["final/ndcg@10"] == pytest.approx({3: m["ndcg@10"]})
    assert tb["final/train/steps"] == {3: 3.0}
    assert tb["zero_shot/ndcg@10"] == pytest.approx({0: m["zero_shot"]["ndcg@10"]})
    assert sorted(tb["loss"]) == [1, 2, 3]


def test_a_resumed_run_continues_the_same_mlflow_run(env):
    from mlflow.tracking import MlflowClient

    from negminer.report import ReportHook

    data, out = write_tiny_beir(env / "d"), env / "r"

    def cfg(steps):
        return TrainConfig(data=str(data), out=str(out), encoder="static", steps=steps, batch_size=8, quiet=True,
                           zero_shot=False, eval_split="none", schedule="constant", report_to="mlflow")

    Trainer(cfg(2), hooks=[ReportHook(["mlflow"])]).run()
    Trainer(cfg(4), hooks=[ReportHook(["mlflow"])]).run(resume=True)
    client = MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    (mrun,) = client.search_runs([client.get_experiment_by_name("negminer").experiment_id])
    assert mrun.info.status == "FINISHED" and mrun.data.params["steps"] == "2"
    hist = {m.step: m.value for m in client.get_metric_history(mrun.info.run_id, "loss")}
    assert hist == pytest.approx({r["step"]: r["loss"] for r in rows_of(out)}) and sorted(hist) == [1, 2, 3, 4]


class Broken:
    """A backend that starts (or not) and then fails at its first log."""

    name, hint = "tensorboard", "; a hint"
    start = True

    def open(self, ctx, saved):
        if not self.start:
            raise RuntimeError("no server\nsecond line")

    def ident(self):
        return None

    def log(self, values, step):
        raise OSError("disk gone")

    log_final = log

    def close(self, ok):
        pass


def test_a_backend_that_fails_is_a_warning_and_one_that_cannot_start_is_one_line(env, monkeypatch, capsys):
    import negminer.report as report

    data = write_tiny_beir(env / "d")
    monkeypatch.setitem(report._CLASSES, "tensorboard", Broken)
    assert main(["train", "--data", str(data), "--out", str(env / "a"), *TRAIN, "--eval-split", "none",
                 "--report-to", "tensorboard"]) == 0
    err = capsys.readouterr().err
    assert err.count("--report-to tensorboard: logging failed (OSError: disk gone)") == 1, err
    assert len(rows_of(env / "a")) == 4

    monkeypatch.setattr(Broken, "start", False)
    assert main(["train", "--data", str(data), "--out", str(env / "b"), *TRAIN, "--report-to", "tensorboard"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "negminer: error: --report-to tensorboard: cannot start (RuntimeError: no server); a hint", err


def test_one_hook_for_two_runs_reports_each(env):
    from negminer.report import ReportHook

    data, hook = write_tiny_beir(env / "d"), ReportHook(["tensorboard"])
    for name in ("a", "b"):
        cfg = TrainConfig(data=str(data), out=str(env / name), encoder="static", steps=2, batch_size=8, quiet=True,
                          zero_shot=False, eval_split="none")
        Trainer(cfg, hooks=[hook]).run()
        assert hook.closed and sorted(tb_scalars(env / name / "tensorboard")["loss"]) == [1, 2]
