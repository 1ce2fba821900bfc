"""The Python API: negminer.train / evaluate / mine validate as the CLI does and give the CLI's results."""

import json

import pytest
from tinydata import write_tiny_beir

import negminer
from negminer.errors import ConfigError

OPTS = dict(encoder="static", steps=4, batch_size=8, seed=3, query_max_length=16, target_max_length=16, quiet=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_beir(tmp_path_factory.mktemp("api") / "d")


def test_train_returns_the_metrics_and_the_run_folder_as_the_cli_writes_them(data, tmp_path):
    from negminer.cli import main

    run = negminer.train(data=str(data), out=str(tmp_path / "api"), **OPTS)
    assert run.out == tmp_path / "api" and run.metrics == json.loads((run.out / "metrics.json").read_text())
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in OPTS.items() if k != "quiet"]
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "cli"), "--quiet", *argv]) == 0
    cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert {k: v for k, v in cli.items() if k != "train"} == {k: v for k, v in run.metrics.items() if k != "train"}
    ev = negminer.evaluate(run.out / "model", str(data))
    assert ev["ndcg@10"] == pytest.approx(run.metrics["ndcg@10"], abs=1e-12)
    out = negminer.mine(run.out / "model", str(data), tmp_path / "neg.jsonl", top_k=3)
    assert len(out.read_text().splitlines()) == 120


@pytest.mark.parametrize("bad,want", [
    (dict(num_negatives=-1), "--num-negatives -1: must be >= 0"),
    (dict(negatives="uniform", margin=0.1), "--margin needs a sampler that scores candidates"),
    (dict(steps=4, epochs=2), "--steps and --epochs"),
    (dict(num_negatvies=4), "unknown option 'num_negatvies'"),
])
def test_train_validates_as_the_cli(data, tmp_path, bad, want):
    with pytest.raises(ConfigError, match=want):
        negminer.train(data=str(data), out=str(tmp_path / "r"), **{**OPTS, **bad})
    assert not (tmp_path / "r").exists()


def test_train_refuses_to_overwrite_a_run_and_resumes_it(data, tmp_path):
    run = negminer.train(data=str(data), out=str(tmp_path / "r"), **OPTS)
    with pytest.raises(ConfigError, match="already holds a run"):
        negminer.train(data=str(data), out=str(tmp_path / "r"), **OPTS)
    again = negminer.train(data=str(data), out=str(tmp_path / "r"), resume=True, **OPTS)
    assert again.metrics["ndcg@10"] == run.metrics["ndcg@10"]


def test_a_config_object_or_file_with_keyword_overrides(data, tmp_path):
    (tmp_path / "c.yaml").write_text(f"data: {data}\nencoder: static\nsteps: 2\nbatch_size: 8\nquiet: true\n")
    run = negminer.train(config=tmp_path / "c.yaml", out=str(tmp_path / "r"), steps=3)
    assert run.config.steps == 3 and run.metrics["train"]["steps"] == 3
    cfg = negminer.make_config({"data": str(data), "encoder": "static"})
    assert negminer.make_config({"steps": 5}, config=cfg).encoder == "static"


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"## Python API\n.*?```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    assert (tmp_path / "runs" / "notebook" / "negatives.jsonl").stat().st_size > 0


def test_the_api_names_stay_callable_after_their_submodules_are_imported(data, tmp_path):
    import negminer.mine  # noqa: F401 (the submodules of the same names)
    import negminer.train.trainer  # noqa: F401

    run = negminer.train(data=str(data), out=str(tmp_path / "r"), **OPTS)
    assert negminer.mine(run.out / "model", str(data), tmp_path / "n.jsonl", top_k=2).is_file()
