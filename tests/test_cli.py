"""The CLI end to end on a tiny dataset with the static tower: train, eval, config files, errors."""

import json
import subprocess
import sys

import pytest
import yaml

from negminer.cli import main

FAST = ["--encoder", "static", "--batch-size", "8", "--lr", "0.05", "--quiet"]


def test_train_then_eval(tiny_beir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(tiny_beir), "--out", str(out), "--steps", "30", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "zero-shot" in printed and "ndcg@10" in printed
    m = json.loads((out / "metrics.json").read_text())
    assert m["train"]["target_encodes"] == 30 * 8 and m["train"]["query_encodes"] == 30 * 8
    # the run learns: the task is a lexical lookup the static tower can fit
    assert m["mrr@10"] > m["zero_shot"]["mrr@10"]
    assert main(["eval", "--model", str(out / "model"), "--data", str(tiny_beir), "--out", str(tmp_path / "ev"),
                 "--quiet"]) == 0
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert list(ev) == ["recall@1", "recall@10", "recall@100", "mrr@10", "ndcg@10", "p@1", "p@5", "num_queries"]
    assert ev["ndcg@10"] == pytest.approx(m["ndcg@10"], abs=1e-6)
    assert len((tmp_path / "ev" / "run.trec").read_text().splitlines()) == 40 * 100


@pytest.mark.parametrize("fmt", ["yaml", "toml"])
def test_config_file_and_flag_override(tiny_beir, tmp_path, fmt):
    cfg = tmp_path / f"c.{fmt}"
    if fmt == "yaml":
        cfg.write_text(yaml.safe_dump({"encoder": "static", "steps": 3, "batch-size": 4, "lr": 0.01, "seed": 9}))
    else:
        cfg.write_text('encoder = "static"\nsteps = 3\nbatch_size = 4\nlr = 0.01\nseed = 9\n')
    out = tmp_path / "run"
    assert main(["train", "--data", str(tiny_beir), "--out", str(out), "--config", str(cfg), "--seed", "11",
                 "--quiet", "--no-zero-shot"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["seed"] == 11 and saved["steps"] == 3 and saved["batch_size"] == 4 and saved["encoder"] == "static"
    assert "zero_shot" not in json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("argv,msg", [
    (["--negatives", "magic"], "unknown --negatives"),
    (["--loss", "nope"], "unknown --loss"),
    (["--batch-size", "1"], "--batch-size 1: must be >= 2"),
    # options accepted at e2b1f5c that then crashed or did the wrong thing (#25, defect 10)
    (["--log-every", "0"], "--log-every 0: must be >= 1"),
    (["--eval-batch-size", "0"], "--eval-batch-size 0: must be >= 1"),
    (["--seed", "-1"], "--seed -1: must be >= 0"),
    (["--epochs", "inf"], "--epochs inf: must be a finite number"),
    (["--sample-temperature", "-1"], "--sample-temperature -1.0: must be >= 0"),
    (["--max-grad-norm", "-1"], "--max-grad-norm -1.0: must be >= 0"),
    (["--max-grad-norm", "nan"], "--max-grad-norm nan: must be a finite number"),
    (["--save-every", "-1"], "--save-every -1: must be >= 0"),
    (["--eval-every", "-1"], "--eval-every -1: must be >= 0"),
    (["--negatives", "cache", "--cache-size", "-1"], "--cache-size -1: must be >= 0"),
    (["--negatives", "cache", "--margin", "nan"], "--margin nan: must be a finite number"),
    (["--negatives", "ance", "--ance-top", "0"], "--ance-top 0: must be >= 1"),
    (["--lr", "inf"], "--lr inf: must be a finite number"),
    (["--weight-decay", "nan"], "--weight-decay nan: must be a finite number"),
    (["--negatives", "uniform", "--margin", "0.1"], "--margin needs a sampler that scores candidates"),
    (["--batching", "ngame", "--batch-size", "24"], "--ngame-cluster-size 16 must divide the batch"),
    (["--encoder", "no/such/model"], "no such directory"),
    (["--store-shard", "--negatives", "tree"], "--store-shard works with"),
    (["--store-shard", "--negatives", "cache", "--refresh", "write-back,corrector"], "--store-shard works with"),
])
def test_bad_options_exit_2(tiny_beir, tmp_path, argv, msg, capsys):
    code = main(["train", "--data", str(tiny_beir), "--out", str(tmp_path / "r"), "--steps", "1", "--quiet",
                 "--encoder", "static", *argv])
    assert code == 2 and msg in capsys.readouterr().err


def test_the_python_api_validates_as_the_cli_does(tiny_beir, tmp_path):
    from negminer.config import TrainConfig
    from negminer.errors import ConfigError
    from negminer.train.trainer import Trainer

    with pytest.raises(ConfigError, match="--batch-size 0: must be >= 2"):  # was a ZeroDivisionError
        Trainer(TrainConfig(data=str(tiny_beir), out=str(tmp_path / "r"), encoder="static", batch_size=0))
    with pytest.raises(ConfigError, match="--memory contaccum"):
        Trainer(TrainConfig(data=str(tiny_beir), out=str(tmp_path / "r"), encoder="static", negatives="cache",
                            memory="contaccum", accumulation=2, batch_size=8))


def test_dry_run_prints_the_pipeline_and_writes_nothing(tiny_beir, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--data", str(tiny_beir), "--out", str(out), "--encoder", "static", "--negatives", "cache",
                 "--margin", "0.1", "--share-negatives", "--refresh", "auto,nystrom", "--refresh-fraction", "0.01",
                 "--batching", "ngame", "--ngame-cluster-size", "8", "--topk-k", "3", "--dry-run"]) == 0
    text = capsys.readouterr().out
    for needle in ("batching    ngame", "memory      plain", "sampler     cache", "write-back -> fraction -> nystrom",
                   "loss        softmax", "shared negatives: one pool", "margin 0.1", "in-batch + drawn mixture",
                   "note        --topk-k is an option of --loss topk"):
        assert needle in text, (needle, text)
    assert not out.exists()


def test_bad_config_file(tmp_path, tiny_beir, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("stepz: 3\n")
    assert main(["train", "--data", str(tiny_beir), "--out", str(tmp_path / "r"), "--config", str(cfg)]) == 2
    assert "unknown option 'stepz'" in capsys.readouterr().err


def test_refuses_to_overwrite_a_run(tiny_beir, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--data", str(tiny_beir), "--out", str(out), "--steps", "2", "--no-zero-shot", *FAST]) == 0
    assert main(["train", "--data", str(tiny_beir), "--out", str(out), "--steps", "2", *FAST]) == 2
    assert "--resume" in capsys.readouterr().err


def test_module_and_console_entry_points():
    r = subprocess.run([sys.executable, "-m", "negminer", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("negminer ")


@pytest.mark.parametrize("extra", [["--bf16"], ["--no-shared"], ["--learn-temperature"], ["--epochs", "0.2"]])
def test_training_options(tiny_beir, tmp_path, extra):
    out = tmp_path / "o"
    args = ["train", "--data", str(tiny_beir), "--out", str(out), "--encoder", "static", "--batch-size", "8",
            "--lr", "0.05", "--quiet", "--no-zero-shot"]
    assert main(args + (["--steps", "3"] if "--epochs" not in extra else []) + extra) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["train"]["steps"] == (3 if "--epochs" not in extra else round(0.2 * 120 // 8))
    if "--no-shared" in extra:
        assert (out / "model" / "query" / "modules.json").exists() and (out / "model" / "target").is_dir()
    if "--learn-temperature" in extra:
        saved = json.loads((out / "model" / "negminer.json").read_text())
        assert saved["learn_temperature"] and saved["temperature"] != 0.05
