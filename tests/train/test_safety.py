"""Reliability: options that cannot work stop before training; a non-finite loss or gradient never
reaches the optimiser or the store; temporaries of a killed save are removed; the store holds
eval-mode embeddings; sampler metadata survives resume."""

import json
import math

import pytest
import torch

from negminer.cli import main
from negminer.config import resolve
from negminer.errors import TrainingDiverged
from negminer.train.trainer import Trainer

BASE = ["--encoder", "static", "--batch-size", "8", "--lr", "0.05", "--seed", "5", "--quiet", "--no-zero-shot",
        "--query-max-length", "16", "--target-max-length", "16"]


@pytest.mark.parametrize("extra,why", [
    (["--negatives", "exact", "--selection", "topk", "--loss", "cache-surrogate"], "selection topk"),
    (["--negatives", "cache", "--cache-size", "10", "--num-negatives", "20"], "draws from 10 targets"),
    (["--negatives", "ance", "--ance-top", "5", "--num-negatives", "8"], "draws from 5 targets"),
    (["--negatives", "cache", "--num-negatives", "500"], "draws from 160 targets"),
    (["--batch-size", "500"], "larger than the 120 training queries"),
    (["--negatives", "cache-stream", "--write-back", "none"], "cannot run with --write-back none"),
], ids=["surrogate-topk", "k-over-cache", "k-over-ance-top", "k-over-targets", "batch-over-queries", "stream-no-write-back"])
def test_impossible_options_stop_before_training(tiny_beir, tmp_path, capsys, extra, why):
    out = tmp_path / "r"
    rc = main(["train", "--data", str(tiny_beir), "--out", str(out), *BASE, "--steps", "2", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("negminer: error:") and why in err[0], err
    assert not (out / "train_log.jsonl").exists() and not (out / "checkpoint").exists()


def trainer(tiny_beir, tmp_path, **kw):
    opts = {"data": str(tiny_beir), "out": str(tmp_path / "run"), "encoder": "static", "batch_size": 8, "lr": 0.05,
            "seed": 5, "quiet": True, "zero_shot": False, "query_max_length": 16, "target_max_length": 16,
            "negatives": "cache", "num_negatives": 4, "refresh_fraction": 0.05, "steps": 6, "save_every": 2, **kw}
    return Trainer(resolve(opts), hooks=[])


def poison(tr, step: int, where: str):
    """Make the loss, or one parameter's gradient, of ``step`` NaN."""
    loss_fn = tr.loss_fn

    class Poisoned(torch.nn.Module):
        needs, replacement = loss_fn.needs, loss_fn.replacement

        def forward(self, **kw):
            loss = loss_fn(**kw)
            if tr.step == step:
                if where == "loss":
                    return loss * float("nan")
                p = next(x for x in tr.model.parameters() if x.requires_grad)
                h = p.register_hook(lambda g: (h.remove(), g * float("nan"))[1])  # sparse gradients too
            return loss

    tr.loss_fn = Poisoned()


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_on_nan_stop_leaves_the_checkpoint_and_the_store_untouched(tiny_beir, tmp_path, where):
    tr = trainer(tiny_beir, tmp_path)
    poison(tr, 3, where)
    with pytest.raises(TrainingDiverged, match="step 4"):  # the 4th step: the log counts from 1
        tr.run()
    ck = json.loads((tmp_path / "run" / "checkpoint" / "trainer.json").read_text())
    assert ck["step"] == 2
    import numpy as np

    saved = np.load(tmp_path / "run" / "checkpoint" / "store.npy")
    assert np.isfinite(tr.store.embeddings().numpy()).all() and np.isfinite(saved).all()
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())
    assert int(tr.store.age.max()) <= 3  # step 3's write-back and refresh never happened (they would be 3 and 4)


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_on_nan_skip_drops_the_step_and_counts_it(tiny_beir, tmp_path, where):
    tr = trainer(tiny_beir, tmp_path, on_nan="skip")
    poison(tr, 3, where)
    m = tr.run()
    assert m["train"]["skipped_steps"] == 1 and m["train"]["steps"] == 6
    rows = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert rows[3]["loss"] is None and rows[3]["skipped_steps"] == 1 and all(r["loss"] is not None for r in rows[4:])
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())
    assert torch.isfinite(tr.store.embeddings()).all()


def test_temporaries_of_a_killed_save_are_removed(tiny_beir, tmp_path):
    run = tmp_path / "run"
    for name in (".checkpoint.abc123.tmp", ".model.xyz.tmp"):
        (run / name).mkdir(parents=True)
        (run / name / "partial.safetensors").write_bytes(b"\0" * 10)
    (run / ".metrics.json.q1.tmp").write_text("{")
    trainer(tiny_beir, tmp_path, steps=1, save_every=0).run()
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_sampler_metadata_survives_resume(tiny_beir, tmp_path):
    tr = trainer(tiny_beir, tmp_path, negatives="cache-stream", cache_size=32, stream_policy="lru", steps=2)
    tr.run()
    seen = {}
    again = trainer(tiny_beir, tmp_path, negatives="cache-stream", cache_size=32, stream_policy="lru", steps=2)
    orig = again.sampler.load_state
    again.sampler.load_state = lambda t, meta: (seen.update(meta), orig(t, meta))
    assert again.resume() and seen == {"policy": "lru"}
    assert list(again.sampler.queue) == list(tr.sampler.queue)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_store_holds_eval_mode_embeddings_when_the_tower_has_dropout(tiny_beir, tmp_path, mode):
    tr = trainer(tiny_beir, tmp_path, encoder="minilm", steps=1, lr=1e-9, refresh_fraction=0.0, write_back=mode)
    assert tr.tower_dropout  # MiniLM trains with dropout 0.1
    tr.model.train()
    tr.setup_sampler()
    before, writes, write = tr.store.target_encodes, [], tr.store.write
    tr.store.write = lambda rows, emb, step: (writes.append(torch.as_tensor(rows)), write(rows, emb, step))
    tr.train_step(0)
    rows = torch.cat(writes).unique()
    gap = (tr.store.embeddings(rows) - tr.store.embed(rows, tr.model)).norm(dim=1).max()
    if mode == "eval":  # re-encoded in eval mode after the step (counted); staleness is model drift only
        assert tr.store.target_encodes == before + len(rows)
        assert gap < 1e-4 and tr.last_stats()["staleness"] < 1e-6
    else:  # the training forward's embeddings: free, but with dropout noise, so no staleness is claimed
        assert tr.store.target_encodes == before and gap > 1e-2
        assert "staleness" not in tr.last_stats()
