"""The fault suite of a training run (#26): every failure is one line before any work, nothing is lost.

Output paths, splits, options and config files stop with exit 2 and one line before anything is written;
a broken checkpoint is named and the previous one used; SIGTERM / SIGINT save and ``--resume`` continues
to the uninterrupted metrics, as does a kill -9 at any point, mid-save included; a diverging run stops
with exit 3 and the step as train_log.jsonl counts it; skipped steps are reported and bounded."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from driver import Poison
from tinydata import write_tiny_beir

from negminer.cli import main

DRIVER = str(Path(__file__).resolve().parents[1] / "driver.py")
ARGS = ["--encoder", "static", "--steps", "12", "--batch-size", "8", "--lr", "0.05", "--seed", "3",
        "--query-max-length", "16", "--target-max-length", "16", "--quiet"]
CACHE = ["--negatives", "cache", "--num-negatives", "4", "--refresh-fraction", "0.1"]


def one_line(capsys_or_text) -> str:
    err = capsys_or_text if isinstance(capsys_or_text, str) else capsys_or_text.readouterr().err
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("negminer: error: ") and "Traceback" not in err, err
    return lines[0]


def run_cli(data, out, *extra, hooks=None):
    """In this process (cheaper than a subprocess where no kill is needed)."""
    return main(["train", "--data", str(data), "--out", str(out), *ARGS, *extra], hooks=hooks)


def driver(data, out, *extra, faults=(), wait=True, timeout=600):
    cmd = [sys.executable, DRIVER, *faults, "--", "train", "--data", str(data), "--out", str(out), *ARGS, *extra]
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def metrics(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    for k in ("seconds", "peak_rss_mb", "phases"):
        m["train"].pop(k)
    return m


def curve(run: Path) -> list:
    rows = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines() if x.strip()]
    return [(r["step"], r["loss"], r["lr"], r["target_encodes"]) for r in rows]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_beir(tmp_path_factory.mktemp("faults") / "data")


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """Uninterrupted runs (in-batch, cache) that every interrupted one must reproduce."""
    root = tmp_path_factory.mktemp("ref")
    for name, extra in (("inbatch", []), ("cache", CACHE)):
        r = driver(data, root / name, *extra)
        assert r.returncode == 0, r.stderr[-2000:]
    return root


def nothing_written(out: Path) -> bool:
    return not (out / "checkpoint").exists() and not (out / "model").exists() and not (out / "train_log.jsonl").exists()


# ---- output paths, splits, options: one line, exit 2, nothing written ------------------------------------
def _file(tmp):
    (tmp / "f").write_text("x")
    return tmp / "f"


OUT_CASES = {
    "out is a file": (lambda t: _file(t), [], "is a file, not a folder"),
    "out's parent is a file": (lambda t: _file(t) / "run", [], "is a file, not a folder"),
    "out's grandparent is a file": (lambda t: _file(t) / "a" / "run", [], "is a file, not a folder"),
    "store-path folder missing": (lambda t: t / "run", ["--store-path", "/nonexistent/dir/x.npy", *CACHE],
                                  "does not exist"),
    "store-path is a folder": (lambda t: t / "run", ["--store-path", "/tmp", *CACHE], "is a folder, not a file"),
    "store-path under a file": (lambda t: t / "run", ["--store-path", "{f}/x.npy", *CACHE], "is a file, not a folder"),
}


@pytest.mark.parametrize("case", list(OUT_CASES))
def test_output_paths_fail_before_any_work(data, tmp_path, capsys, case):
    make, extra, want = OUT_CASES[case]
    out = make(tmp_path)
    extra = [x.replace("{f}", str(_file(tmp_path))) for x in extra]
    rc = run_cli(data, out, *extra)
    assert rc == 2 and want in one_line(capsys)
    assert not out.is_dir() or nothing_written(out)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_out_not_writable(data, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    assert run_cli(data, ro / "run") == 2 and "not writable" in one_line(capsys)


def _pairs_only(t):
    p = t / "pairs"
    p.mkdir()
    (p / "train.jsonl").write_text("".join(json.dumps({"query": f"q {i} about thing {i % 7}", "positive": f"doc {i}"})
                                           + "\n" for i in range(40)))
    return p


def _zero_grades(t):
    d = write_tiny_beir(t / "d")
    rows = (d / "qrels" / "test.tsv").read_text().splitlines()
    (d / "qrels" / "test.tsv").write_text("\n".join([rows[0]] + [r.rsplit("\t", 1)[0] + "\t0" for r in rows[1:]]))
    return d


SPLIT_CASES = {
    "pairs without a test split": (_pairs_only, [], "split 'test' for final metrics (--eval-split): missing"),
    "no such train split": (lambda t: write_tiny_beir(t / "d"), ["--train-split", "nope"],
                            "split 'nope' for training (--train-split): missing"),
    "no such eval split": (lambda t: write_tiny_beir(t / "d"), ["--eval-split", "dev"], "split 'dev'"),
    "no such dev split": (lambda t: write_tiny_beir(t / "d"), ["--eval-every", "2", "--dev-split", "dev"],
                          "split 'dev' for model selection (--dev-split): missing"),
    "train split without positives": (lambda t: _zero_grades(t), ["--train-split", "test"], "has a positive grade"),
    "patience without evaluations": (lambda t: write_tiny_beir(t / "d"), ["--patience", "2"], "--patience counts"),
    "unknown select metric": (lambda t: write_tiny_beir(t / "d"), ["--eval-every", "2", "--select-metric", "f1"],
                              "--select-metric 'f1'"),
    "steps and epochs": (lambda t: write_tiny_beir(t / "d"), ["--epochs", "2"], "--steps and --epochs"),
    "too few queries to hold out": (lambda t: write_tiny_beir(t / "d"),
                                    ["--eval-every", "2", "--dev-size", "500"], "--dev-size 500: the dataset"),
    "mined default count over the file's": (lambda t: write_tiny_beir(t / "d"), None, "--num-negatives 8 but"),
}


@pytest.mark.parametrize("case", list(SPLIT_CASES))
def test_missing_splits_and_bad_combinations_fail_before_any_work(tmp_path, capsys, case):
    make, extra, want = SPLIT_CASES[case]
    d = make(tmp_path)
    if extra is None:  # a mined file with 3 negatives per query, the default --num-negatives 8
        qids = [f"q{i}" for i in range(120)]
        (tmp_path / "m.jsonl").write_text("".join(json.dumps({"query_id": q, "neg_ids": ["d1", "d2", "d3", "d4"][
            :3 if q != "q1" else 4]}) + "\n" for q in qids))
        extra = ["--negatives", "mined", "--mined-file", str(tmp_path / "m.jsonl")]
    out = tmp_path / "run"
    rc = main(["train", "--data", str(d), "--out", str(out), *[a for a in ARGS if a != "--quiet"], "--quiet", *extra])
    line = one_line(capsys)
    assert rc == 2 and (want is None or want in line), line
    assert not out.exists()


def test_a_test_split_without_positive_grades_warns(tmp_path, capsys):
    d = _zero_grades(tmp_path)
    rc = main(["train", "--data", str(d), "--out", str(tmp_path / "run"), *[a for a in ARGS if a != "--quiet"],
               "--steps", "1", "--no-zero-shot"])
    err = capsys.readouterr().err
    assert rc == 0 and "negminer: warning:" in err and "every metric would be 0" in err


def test_eval_split_none_trains_without_evaluation(tmp_path, capsys):
    d = _pairs_only(tmp_path)
    out = tmp_path / "run"
    rc = main(["train", "--data", str(d), "--out", str(out), *ARGS, "--steps", "2", "--eval-split", "none"])
    m = json.loads((out / "metrics.json").read_text())
    assert rc == 0 and "ndcg@10" not in m and m["train"]["steps"] == 2 and (out / "model" / "negminer.json").is_file()
    assert "no evaluation" in capsys.readouterr().out


CONFIG_CASES = {
    "unknown key": ("bogus: 1\n", "unknown option 'bogus'"),
    "broken yaml": ("lr: [1, 2\n", "cannot parse config"),
    "wrong type": ("temperature: warm\n", "option temperature: expected float"),
    "not a mapping": ("- 1\n- 2\n", "must be a mapping"),
    "out of range": ("num_negatives: -2\n", "--num-negatives -2"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_files(data, tmp_path, capsys, case):
    text, want = CONFIG_CASES[case]
    (tmp_path / "c.yaml").write_text(text)
    rc = run_cli(data, tmp_path / "run", "--config", str(tmp_path / "c.yaml"))
    assert rc == 2 and want in one_line(capsys) and not (tmp_path / "run").exists()


# ---- a full disk during a save: exit 1, the previous checkpoint intact -----------------------------------
def test_a_failed_save_names_the_file_and_keeps_the_previous_checkpoint(data, tmp_path):
    out = tmp_path / "run"
    r = driver(data, out, "--steps", "2", "--no-zero-shot")
    assert r.returncode == 0, r.stderr[-2000:]
    before = json.loads((out / "checkpoint" / "trainer.json").read_text())["step"]
    cmd = [sys.executable, "-m", "negminer", "train", "--data", str(data), "--out", str(out), *ARGS, "--steps", "4",
           "--no-zero-shot", "--resume"]
    r = subprocess.run(["bash", "-c", 'ulimit -f 2048; exec "$@"', "bash", *cmd], capture_output=True, text=True)
    line = one_line(r.stderr)
    assert r.returncode == 1 and "cannot write the checkpoint" in line and "previous checkpoint is intact" in line
    assert json.loads((out / "checkpoint" / "trainer.json").read_text())["step"] == before
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())


# ---- corrupt checkpoints on --resume -------------------------------------------------------------------
def _truncate(p: Path):
    b = p.read_bytes()
    p.write_bytes(b[: len(b) // 2])


BREAK = {
    "truncated optimizer.safetensors": lambda c: _truncate(c / "optimizer.safetensors"),
    "truncated model.safetensors": lambda c: _truncate(c / "model.safetensors"),
    "broken trainer.json": lambda c: (c / "trainer.json").write_text('{"step": 4, "optim'),
    "trainer.json not a state": lambda c: (c / "trainer.json").write_text("[1, 2]"),
    "missing rng.safetensors": lambda c: (c / "rng.safetensors").unlink(),
    "truncated store.npy": lambda c: _truncate(c / "store.npy"),
}


@pytest.fixture(scope="module")
def killed(data, tmp_path_factory):
    """A cache run with checkpoints at steps 4 and 8 (checkpoint, checkpoint.prev), killed before step 10."""
    out = tmp_path_factory.mktemp("killed") / "run"
    r = driver(data, out, *CACHE, "--save-every", "4", faults=("--die-at", "9"))
    assert r.returncode == 17 and (out / "checkpoint.prev").is_dir()
    return out


@pytest.mark.parametrize("case", list(BREAK))
def test_a_broken_checkpoint_is_named_and_the_previous_one_resumes(data, reference, killed, tmp_path, capsys, case):
    out = tmp_path / "run"
    shutil.copytree(killed, out)
    BREAK[case](out / "checkpoint")
    name = case.split()[-1]
    assert run_cli(data, out, *CACHE, "--save-every", "4", "--resume") == 0
    err = capsys.readouterr().err
    warn = [x for x in err.splitlines() if x.startswith("negminer: warning:")]
    assert len(warn) == 1 and name in warn[0] and "resuming from checkpoint.prev" in warn[0], err
    assert metrics(out) == metrics(reference / "cache") and curve(out) == curve(reference / "cache")


def test_no_readable_checkpoint_is_one_line(data, killed, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(killed, out)
    (out / "checkpoint" / "trainer.json").write_text("{")
    _truncate(out / "checkpoint.prev" / "model.safetensors")
    line = one_line(capsys) if run_cli(data, out, *CACHE, "--resume") == 2 else pytest.fail("not refused")
    assert "checkpoint/trainer.json" in line and "model.safetensors" in line and "no readable checkpoint" in line


def test_a_checkpoint_of_another_model_is_one_line(data, killed, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(killed, out)
    assert run_cli(data, out, *CACHE, "--resume", "--no-shared") == 2
    assert "does not fit this run" in one_line(capsys)


# ---- signals and kills: --resume reproduces the uninterrupted run ---------------------------------------
@pytest.mark.parametrize("sig,code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_saves_and_resume_reproduces_the_run(data, reference, tmp_path, sig, code):
    out = tmp_path / "run"
    r = driver(data, out, *CACHE, faults=("--signal-at", "6", "--signal", sig))
    line = one_line(r.stderr)
    assert r.returncode == code and "after step 7" in line and "--resume" in line
    assert json.loads((out / "checkpoint" / "trainer.json").read_text())["step"] == 7
    assert run_cli(data, out, *CACHE, "--resume") == 0
    assert metrics(out) == metrics(reference / "cache") and curve(out) == curve(reference / "cache")


def test_sigterm_from_outside_mid_run(data, reference, tmp_path):
    out = tmp_path / "run"
    p = driver(data, out, faults=("--sleep", "0.3"), wait=False)
    deadline = time.time() + 120
    while time.time() < deadline and len(curve(out) if (out / "train_log.jsonl").exists() else []) < 3:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=120) == 143
    assert "continue with --resume" in p.stderr.read()
    step = json.loads((out / "checkpoint" / "trainer.json").read_text())["step"]
    assert 3 <= step < 12
    assert run_cli(data, out, "--resume") == 0 and metrics(out) == metrics(reference / "inbatch")


def test_kill_9_at_random_points_and_mid_save_resumes_to_the_same_run(data, reference, tmp_path):
    """Three kills at seeded random moments of a run that saves every step (so most land in or near a save),
    then two kills inside a save (after its model file); each resumed run ends as the uninterrupted one."""
    rng = random.Random(26)
    for trial in range(3):
        out = tmp_path / f"kill{trial}"
        p = driver(data, out, *CACHE, "--save-every", "1", faults=("--sleep", "0.05"), wait=False)
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "train_log.jsonl").exists():
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.6))
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        assert run_cli(data, out, *CACHE, "--save-every", "1", "--resume") == 0
        assert metrics(out) == metrics(reference / "cache") and curve(out) == curve(reference / "cache"), trial
    for n in (1, 5):
        out = tmp_path / f"midsave{n}"
        r = driver(data, out, *CACHE, "--save-every", "2", faults=("--die-mid-save", str(n)))
        assert r.returncode == 9
        assert run_cli(data, out, *CACHE, "--save-every", "2", "--resume") == 0
        assert metrics(out) == metrics(reference / "cache") and curve(out) == curve(reference / "cache"), n


def test_periodic_saves_by_time_keep_the_previous_checkpoint(data, reference, tmp_path):
    out = tmp_path / "run"
    assert run_cli(data, out, *CACHE, "--save-every-seconds", "0.001") == 0
    assert json.loads((out / "checkpoint.prev" / "trainer.json").read_text())["step"] == 11
    assert metrics(out) == metrics(reference / "cache")


# ---- divergence -----------------------------------------------------------------------------------------
def test_a_huge_learning_rate_stops_at_the_first_step(data, tmp_path, capsys):
    out = tmp_path / "run"
    rc = run_cli(data, out, "--lr", "1e6", "--save-every", "1")
    line = one_line(capsys)
    assert rc == 3 and "scaled the weights' norm" in line and "at step 1" in line
    assert not (out / "checkpoint").exists()


@pytest.mark.parametrize("kind,want", [("nan", "the loss is nan"), ("spike", "the largest of the last")])
def test_the_divergence_message_counts_steps_as_the_log(data, tmp_path, capsys, kind, want):
    out = tmp_path / "run"
    rc = run_cli(data, out, "--save-every", "4", "--steps", "20", hooks=[Poison([14], kind)])
    line = one_line(capsys)
    assert rc == 3 and want in line and "at step 15" in line and "checkpoint of step 12" in line
    assert curve(out)[-1][0] == 14 and json.loads((out / "checkpoint" / "trainer.json").read_text())["step"] == 12


def test_skipped_steps_are_reported(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(data, out, "--on-nan", "skip", hooks=[Poison([3, 8], "nan")]) == 0
    r = capsys.readouterr()
    assert "skipped steps: 2 of 12" in r.out and "2 of 12 steps were skipped" in r.err
    assert json.loads((out / "metrics.json").read_text())["train"]["skipped_steps"] == 2


def test_too_many_skipped_steps_stop_the_run(data, tmp_path, capsys):
    out = tmp_path / "run"
    rc = run_cli(data, out, "--on-nan", "skip", hooks=[Poison(range(2, 12), "nan")])
    line = one_line(capsys)
    assert rc == 3 and "5 of 7 steps skipped" in line and "--max-skipped 0.1" in line


# ---- model selection -------------------------------------------------------------------------------------
def test_selection_on_a_held_out_slice_writes_the_best_and_the_last(data, tmp_path):
    from negminer.config import resolve
    from negminer.train.trainer import Trainer

    out = tmp_path / "run"
    opts = dict(data=str(data), out=str(out), encoder="static", steps=12, batch_size=8, lr=0.05, seed=3,
                query_max_length=16, target_max_length=16, quiet=True, eval_every=3)
    tr = Trainer(resolve(opts), hooks=[])
    held = set(tr.dataset.qrels["heldout"])
    assert len(held) == 12 and not held & set(tr.qids) and not held & set(tr.dataset.qrels["test"])
    m = tr.run()
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    evals = [r["eval"] for r in log if "eval" in r]
    assert [e["split"] for e in evals] == ["heldout"] * 3  # steps 3, 6, 9; never test
    sel = m["selection"]
    scores = [e["ndcg@10"] for e in evals] + [None]
    assert sel["split"] == "heldout" and sel["best"] >= max(s for s in scores if s is not None)
    assert (out / "model" / "negminer.json").is_file() and (out / "model-last" / "negminer.json").is_file()
    from negminer.cli import main as cli

    ev = tmp_path / "ev"
    assert cli(["eval", "--model", str(out / "model"), "--data", str(data), "--out", str(ev), "--quiet"]) == 0
    assert json.loads((ev / "metrics.json").read_text())["ndcg@10"] == pytest.approx(m["ndcg@10"], abs=1e-9)


def test_patience_stops_training_and_a_resumed_run_keeps_the_selection(data, tmp_path):
    out = tmp_path / "run"
    # a learning rate too small to move any metric: no evaluation improves on the first, so --patience 2 stops
    extra = ["--lr", "1e-12", "--eval-every", "2", "--patience", "2", "--steps", "30", "--save-every", "1"]
    rc = run_cli(data, out, *extra)
    m = json.loads((out / "metrics.json").read_text())
    assert rc == 0 and m["train"]["stopped_by"] == "patience" and m["train"]["steps"] == 6
    assert m["selection"]["best_step"] == 2
    killed = tmp_path / "killed"
    r = driver(data, killed, *extra, faults=("--die-at", "5"))
    assert r.returncode == 17
    assert run_cli(data, killed, *extra, "--resume") == 0 and metrics(killed) == metrics(out)


def test_a_mid_training_checkpoint_evaluates(data, killed, capsys):
    out = killed
    assert main(["eval", "--model", str(out / "checkpoint"), "--data", str(data), "--quiet"]) == 0
    assert "ndcg@10" in capsys.readouterr().out


ARGPARSE_CASES = {
    "not an integer": (["train", "--steps", "abc"], "argument --steps: invalid int value"),
    "not a number": (["train", "--lr", "fast"], "argument --lr: invalid float value"),
    "unknown option": (["train", "--stpes", "3"], "unrecognized arguments: --stpes"),
    "unknown command": (["trian"], "invalid choice: 'trian'"),
    "mine without --out": (["mine", "--model", "static", "--data", "x"], "required: --out"),
    "eval with a bad backend": (["eval", "--model", "m", "--data", "d", "--backend", "gpu"], "invalid choice: 'gpu'"),
    "data check without a path": (["data", "check"], "required: path"),
}


@pytest.mark.parametrize("case", list(ARGPARSE_CASES))
def test_command_line_syntax_errors_are_one_line(capsys, case):
    argv, want = ARGPARSE_CASES[case]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and want in one_line(capsys)


def test_the_datas_own_dev_split_is_used_and_test_only_when_asked(tmp_path):
    from negminer.config import resolve
    from negminer.train.trainer import Trainer

    d = write_tiny_beir(tmp_path / "d")
    rows = (d / "qrels" / "test.tsv").read_text().splitlines()
    (d / "qrels" / "dev.tsv").write_text("\n".join(rows[:11]) + "\n")  # 10 of the test queries
    opts = dict(data=str(d), out=str(tmp_path / "run"), encoder="static", steps=2, batch_size=8, quiet=True,
                eval_every=1)
    tr = Trainer(resolve(opts), hooks=[])
    assert tr.dev_split == "dev" and "heldout" not in tr.dataset.qrels and len(tr.qids) == 120
    tr = Trainer(resolve({**opts, "dev_split": "test", "select_metric": "none"}), hooks=[])
    assert tr.dev_split == "test" and tr.selection is None
    m = tr.run()
    log = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["eval"]["split"] for r in log if "eval" in r] == ["test"] and "selection" not in m
    assert not (tmp_path / "run" / "model-last").exists()


def _xmc_without_test(t):
    x = t / "xmc"
    x.mkdir()
    (x / "lbl.json").write_text("".join(json.dumps({"uid": f"L{i}", "title": f"label {i} of kind {i % 5}"}) + "\n"
                                        for i in range(30)))
    (x / "trn.json").write_text("".join(json.dumps({"uid": f"P{i}", "title": f"point {i} kind {i % 5}",
                                                    "target_ind": [i % 30, (i * 7) % 30]}) + "\n" for i in range(40)))
    return x


def test_xmc_data_without_a_test_file_fails_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--data", str(_xmc_without_test(tmp_path)), "--out", str(out), *ARGS])
    assert rc == 2 and "split 'test' for final metrics (--eval-split): missing" in one_line(capsys)
    assert not out.exists()


def test_a_run_with_only_the_previous_checkpoint_is_not_overwritten(data, killed, tmp_path, capsys):
    """A kill between a save's two renames leaves checkpoint.prev alone: a new run there must not start over."""
    out = tmp_path / "run"
    shutil.copytree(killed, out)
    shutil.rmtree(out / "checkpoint")
    assert run_cli(data, out, *CACHE) == 2 and "already holds a run" in one_line(capsys)
    assert (out / "checkpoint.prev" / "trainer.json").is_file()
