"""Features of paying hard negatives per second: --time-budget, --negatives mined, --share-negatives,
--negative-grad none and the phase timings."""

import json

import pytest
import torch

from driver import Sleep

from negminer.cli import main
from negminer.losses import SoftmaxLoss
from negminer.pipeline import loss_inputs
from negminer.samplers import Batch, Draw, Exclusions

BASE = ["--encoder", "static", "--batch-size", "8", "--lr", "0.05", "--seed", "5", "--quiet", "--no-zero-shot",
        "--num-negatives", "4"]


def rows(run):
    return [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]


def metrics(run):
    return json.loads((run / "metrics.json").read_text())


def train(data, out, *extra, hooks=None):
    return main(["train", "--data", str(data), "--out", str(out), *BASE, *extra], hooks=hooks)


# ---- time budget -----------------------------------------------------------------------------

def test_time_budget_stops_training_and_resume_counts_the_time_spent(tiny_beir, tmp_path):
    """Stops at the first step boundary past the budget; a resumed run adds to the seconds spent."""
    slow = [Sleep(0.25)]  # every step takes 0.25 s longer, inside its timed region
    out = tmp_path / "t"
    args = ["--steps", "1000", "--schedule", "constant", "--warmup", "2"]
    assert train(tiny_beir, out, *args, "--time-budget", "1.0", "--eval-every-seconds", "0.4", hooks=slow) == 0
    m, log = metrics(out), rows(out)
    # an evaluation at the first step past each multiple of 0.4 s of training, none at the budget's end
    secs = [0.0] + [r["seconds"] for r in log]
    want = [int(b // 0.4) > int(a // 0.4) for a, b in zip(secs, secs[1:])][:-1] + [False]
    assert ["eval" in r for r in log] == want and any(want[:-1]) or secs[-2] < 0.4, log
    assert main(["train", "--data", str(tiny_beir), "--out", str(tmp_path / "e"), *BASE, "--steps", "4",
                 "--eval-every", "2", "--log-every", "3"]) == 0
    assert [(r["step"], "seconds" in r, "eval" in r) for r in rows(tmp_path / "e")] == [
        (2, True, True), (3, True, False), (4, True, False)]  # an evaluation row carries its time
    assert m["train"]["stopped_by"] == "time_budget" and 1 <= m["train"]["steps"] < 1000
    assert log[-1]["seconds"] >= 1.0 and (len(log) == 1 or log[-2]["seconds"] < 1.0)
    first = len(log)
    budget2 = round(m["train"]["seconds"] + 1.0, 2)
    assert train(tiny_beir, out, *args, "--time-budget", str(budget2), "--resume", hooks=slow) == 0
    m2, log = metrics(out), rows(out)
    assert [r["step"] for r in log] == list(range(1, m2["train"]["steps"] + 1)) and len(log) > first
    secs = [r["seconds"] for r in log]
    assert secs == sorted(secs) and secs[-1] >= budget2 and secs[-2] < budget2  # the time before is counted
    assert m2["train"]["seconds"] == pytest.approx(secs[-1], abs=0.01)


def test_constant_schedule_keeps_the_rate_after_warmup(tiny_beir, tmp_path):
    out = tmp_path / "c"
    assert train(tiny_beir, out, "--steps", "6", "--schedule", "constant", "--warmup", "2") == 0
    lrs = [r["lr"] for r in rows(out)]
    assert lrs[0] < 0.05 and all(x == pytest.approx(0.05) for x in lrs[2:]), lrs


# ---- phases ------------------------------------------------------------------------------------

def test_phase_seconds_are_logged_and_add_up(tiny_beir, tmp_path):
    out = tmp_path / "p"
    assert train(tiny_beir, out, "--steps", "4", "--negatives", "cache", "--refresh-fraction", "0.1") == 0
    ph = metrics(out)["train"]["phases"]
    assert set(ph) == {"setup", "batching", "query_encode", "target_encode_pos", "sample", "target_encode_neg", "loss_backward",
                       "optimizer", "write_back", "refresh"}
    assert all(v >= 0 for v in ph.values()), ph  # random batches and 4 x 8 static positives can round to 0 ms
    assert all(ph[k] > 0 for k in ("setup", "sample", "loss_backward", "optimizer", "refresh")), ph
    assert sum(ph.values()) <= metrics(out)["train"]["seconds"] + 0.01
    assert rows(out)[-1]["phases"] == ph


# ---- mined negatives ---------------------------------------------------------------------------

def test_mined_from_a_mine_file(tiny_beir, tmp_path):
    neg = tmp_path / "neg.jsonl"
    assert main(["mine", "--model", "static", "--data", str(tiny_beir), "--out", str(neg), "--top-k", "5",
                 "--quiet"]) == 0
    out = tmp_path / "m"
    assert train(tiny_beir, out, "--steps", "6", "--negatives", "mined", "--mined-file", str(neg)) == 0
    last = rows(out)[-1]
    assert last["query_encodes"] == 48 and 48 < last["target_encodes"] <= 48 + 6 * 32


def test_mined_sampler_draws_from_the_list_and_masks_positives():
    from negminer.samplers.mined import MinedSampler

    lists = [[5, 6, 7, 8, 9, 10], [1, 2], []]
    s = MinedSampler(4, lists)
    seen = set()
    for step in range(50):
        bt = Batch(step, torch.tensor([7, 3, 4]), Exclusions([{7}, {3}, {4}], 20), torch.zeros(3, 2),
                   torch.Generator().manual_seed(step), 20.0, queries=torch.tensor([0, 1, 2]))
        d = s.sample(torch.zeros(3, 2), bt, None)
        ok0 = d.ids[0][~d.mask[0]].tolist()
        assert 7 not in ok0 and set(ok0) <= {5, 6, 8, 9, 10} and len(set(ok0)) == len(ok0)
        seen.update(ok0)
        assert sorted(d.ids[1][~d.mask[1]].tolist()) == [1, 2] and d.mask[2].all()
        assert d.log_pi is None
    assert seen == {5, 6, 8, 9, 10}


def test_mined_file_errors_name_file_line_and_field(tiny_beir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query_id": "q0", "neg_ids": ["d1"]}) + "\n"
                   + json.dumps({"query_id": "q1", "neg_ids": ["nope"]}) + "\n")
    assert train(tiny_beir, tmp_path / "x", "--steps", "2", "--negatives", "mined", "--mined-file", str(bad)) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2" in err and "neg_ids" in err and "nope" in err
    assert not (tmp_path / "x" / "metrics.json").exists()


def test_mined_without_any_list_is_refused(tiny_beir, tmp_path, capsys):
    assert train(tiny_beir, tmp_path / "x", "--steps", "2", "--negatives", "mined") == 2
    assert "no negatives" in capsys.readouterr().err


# ---- negative-grad none --------------------------------------------------------------------------

def test_negative_grad_none_costs_no_target_encodes(tiny_beir, tmp_path):
    out = tmp_path / "n"
    assert train(tiny_beir, out, "--steps", "6", "--negatives", "cache", "--negative-grad", "none") == 0
    log = rows(out)
    # the initial fill (160 targets) and the positives (6 x 8): drawn negatives cost nothing
    assert log[-1]["target_encodes"] == 160 + 48 and log[-1]["refresh_encodes"] == 160
    assert all(r["drawn_age"] >= 0 for r in log) and log[-1]["drawn_age"] > 0


@pytest.mark.parametrize("args", [["--negatives", "uniform", "--negative-grad", "none"],
                                  ["--negatives", "mined", "--share-negatives", "--loss", "cache-surrogate"],
                                  ["--share-negatives"]],
                         ids=["grad-none-uniform", "share-surrogate", "share-inbatch"])
def test_impossible_combinations_exit_2(tiny_beir, tmp_path, args, capsys):
    assert train(tiny_beir, tmp_path / "x", "--steps", "2", *args) == 2
    assert "negminer: error:" in capsys.readouterr().err


# ---- shared negatives --------------------------------------------------------------------------

def test_shared_pool_matches_a_brute_force_softmax():
    """Uncorrected sharing (mined lists): each query's softmax runs over its positive, the other
    positives and all B x k drawn negatives, its own positives and masked slots left out."""
    g = torch.Generator().manual_seed(0)
    b, k, d = 3, 2, 5
    q, pos = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    ids = torch.tensor([[10, 11], [1, 12], [13, 0]])
    mask = torch.tensor([[False, False], [False, False], [False, True]])
    neg = torch.randn(b, k, d, generator=g)
    bt = Batch(0, torch.tensor([0, 1, 2]), Exclusions([{0}, {1}, {2}], 20), pos, g, 1.0,
               positives=Exclusions([{0}, {1}, {2}], 20))
    loss = SoftmaxLoss()
    got = loss(**loss_inputs(loss, q, pos, 1.0, bt, Draw(ids, mask), neg, True, share=True))
    flat, fids, fmask = neg.reshape(-1, d), ids.reshape(-1), mask.reshape(-1)
    want = 0.0
    for i in range(b):
        logits = [q[i] @ pos[i]] + [q[i] @ pos[j] for j in range(b) if j != i]
        logits += [q[i] @ flat[s] for s in range(b * k) if not fmask[s] and int(fids[s]) != i]
        want += -torch.log_softmax(torch.stack(logits), 0)[0]
    assert float(got) == pytest.approx(float(want / b), rel=1e-5)


@pytest.mark.parametrize("neg", ["cache", "uniform", "cache-stream", "mined"])
def test_shared_negatives_train_with_every_sampler(tiny_beir, tmp_path, neg):
    extra = ["--negatives", neg, "--share-negatives"]
    if neg == "mined":
        f = tmp_path / "neg.jsonl"
        assert main(["mine", "--model", "static", "--data", str(tiny_beir), "--out", str(f), "--quiet"]) == 0
        extra += ["--mined-file", str(f)]
    if neg == "cache-stream":
        extra += ["--cache-size", "32"]
    out = tmp_path / "s"
    assert train(tiny_beir, out, "--steps", "4", *extra) == 0
    assert all(r["loss"] == r["loss"] for r in rows(out))
