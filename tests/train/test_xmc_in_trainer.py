"""The multi-label parts in the trainer: every XMC loss with in-batch, sampled and all-target negatives,
NGAME batches, their counters, and resume."""

import json

import pytest
import torch

from negminer.cli import main
from negminer.config import resolve
from negminer.train.trainer import Trainer
from tinydata import write_tiny_multilabel
from runkit import Crash, CrashAt

BASE = ["--encoder", "static", "--batch-size", "8", "--lr", "0.05", "--seed", "5", "--quiet", "--no-zero-shot",
        "--num-negatives", "4"]


@pytest.fixture
def tiny_ml(tmp_path):
    return write_tiny_multilabel(tmp_path / "ml")


def rows(run):
    return [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("loss", ["softmax", "decoupled", "topk", "triplet"])
@pytest.mark.parametrize("neg", [["--negatives", "inbatch"], ["--negatives", "cache"], ["--negatives", "exact"],
                                 ["--negatives", "ance", "--refresh-every", "4"], ["--negatives", "tree"],
                                 ["--negatives", "all"]],
                         ids=["inbatch", "cache", "exact", "ance", "tree", "all"])
def test_losses_train_with_every_negative_source(tiny_ml, tmp_path, loss, neg):
    out = tmp_path / "r"
    assert main(["train", "--data", str(tiny_ml), "--out", str(out), *BASE, "--steps", "6", "--loss", loss, *neg,
                 "--topk-k", "3"]) == 0
    log = rows(out)
    assert len(log) == 6 and all(r["loss"] is not None and r["loss"] == r["loss"] for r in log)
    assert log[-1]["query_encodes"] == 48
    m = json.loads((out / "metrics.json").read_text())
    assert {"xmc_p@1", "xmc_p@5", "xmc_psp@5", "ndcg@10"} <= set(m)
    if neg[1] == "all":  # two passes over the 254 targets per step, no separate positive encode
        assert log[-1]["target_encodes"] == 6 * 2 * 254


@pytest.mark.parametrize("loss", ["softmax", "decoupled"])
def test_ngame_batches_train_and_count_the_clustering(tiny_ml, tmp_path, loss):
    out = tmp_path / "n"
    assert main(["train", "--data", str(tiny_ml), "--out", str(out), *BASE, "--steps", "20", "--loss", loss,
                 "--batching", "ngame", "--ngame-cluster-size", "4", "--negatives", "cache"]) == 0
    log = rows(out)
    # 64 training queries encoded once for the first clustering, then recorded embeddings only
    # (64 = 8 batches of 8: every query is seen each epoch, nothing re-encoded at the epoch starts)
    assert log[-1]["query_encodes"] == 20 * 8 + 64
    assert log[-1]["phases"]["batching"] > 0


@pytest.mark.parametrize("extra", [
    ["--batching", "ngame", "--ngame-cluster-size", "4", "--loss", "decoupled", "--negatives", "cache"],
    ["--batching", "ngame", "--ngame-cluster-size", "4", "--ngame-warmup", "1", "--ngame-curriculum", "1,2",
     "--ngame-embeddings", "encode"],
    ["--negatives", "all", "--loss", "topk", "--chunk-size", "40"],
], ids=["ngame-cache-decoupled", "ngame-curriculum-encode", "all-topk"])
def test_resume_reproduces_the_uninterrupted_run(tiny_ml, tmp_path, extra):
    def cfg(out):
        args = dict(data=str(tiny_ml), out=str(out), encoder="static", batch_size=8, lr=0.05, seed=5, quiet=True,
                    zero_shot=False, num_negatives=4, steps=30, save_every=10)
        it = iter(extra)
        for k in it:
            args[k[2:].replace("-", "_")] = next(it)
        return resolve(args)

    full = tmp_path / "full"
    Trainer(cfg(full)).run()
    run = tmp_path / "crashed"
    with pytest.raises(Crash):
        Trainer(cfg(run), hooks=[CrashAt(17)]).run()  # after the checkpoint of step 10, in epoch 3
    Trainer(cfg(run)).run(resume=True)
    assert [r["loss"] for r in rows(run)] == [r["loss"] for r in rows(full)]
    assert rows(run)[-1]["query_encodes"] == rows(full)[-1]["query_encodes"]
    a, b = (json.loads((p / "metrics.json").read_text()) for p in (full, run))
    assert a["xmc_psp@5"] == b["xmc_psp@5"] and a["ndcg@10"] == b["ndcg@10"]


def test_decoupled_equals_softmax_on_single_label_data(tiny_beir, tmp_path):
    """One positive per query: the decoupled loss is the softmax, step for step."""
    curves = []
    for loss in ("softmax", "decoupled"):
        out = tmp_path / loss
        assert main(["train", "--data", str(tiny_beir), "--out", str(out), *BASE, "--steps", "5", "--loss", loss,
                     "--negatives", "cache"]) == 0
        curves.append([r["loss"] for r in rows(out)])
    assert curves[0] == pytest.approx(curves[1], rel=1e-5, abs=1e-6)
