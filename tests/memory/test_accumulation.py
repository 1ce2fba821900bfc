"""--memory accumulation and contaccum in the trainer: the accumulated gradient against a per-micro-batch
brute force, one micro-batch = the plain step, the bank's warm-up, every loss, exact resume."""

import json

import pytest
import torch

from negminer import rules
from negminer.cli import main
from negminer.config import resolve
from negminer.errors import ConfigError
from negminer.train.trainer import Trainer, tower_norm_ratio
from runkit import Crash, CrashAt
from tinydata import write_tiny_multilabel


def curve(run):
    return [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]


def train(data, out, *extra, steps=6):
    assert main(["train", "--data", str(data), "--out", str(out), "--encoder", "static", "--steps", str(steps),
                 "--batch-size", "8", "--lr", "0.05", "--seed", "2", "--quiet", "--no-zero-shot", *extra]) == 0
    return curve(out)


def test_accumulated_gradient_is_the_mean_of_the_micro_batch_gradients(tiny_beir, tmp_path):
    """Static tower, separate towers (no dropout): each micro-batch's in-batch InfoNCE written out by hand."""
    cfg = resolve(dict(data=str(tiny_beir), out=str(tmp_path / "r"), encoder="static", shared=False, batch_size=9,
                       memory="accumulation", accumulation=3, seed=4, quiet=True, zero_shot=False, steps=1))
    tr = Trainer(cfg)
    tr.setup_sampler()
    tr.model.train()
    got = {}

    def capture(step, loss=0.0):
        got.update({n: p.grad.to_dense().clone() for n, p in tr.model.named_parameters() if p.grad is not None})
        got["ratio"] = tower_norm_ratio(tr.model)["grad_norm_ratio"]
        return False

    tr.optimizer_step = capture
    tr.train_step(0)
    idx, pos_rows = tr.batch_rows(0)
    m = tr.model
    m.zero_grad(set_to_none=True)
    for j in range(3):
        mi, mp = idx[3 * j:3 * j + 3], pos_rows[3 * j:3 * j + 3]
        q = m.embed_queries(m.tokenize_queries([tr.query_texts[i] for i in mi]))
        p = m.embed_targets(m.tokenize_targets([tr.target_inputs[r] for r in mp]))
        s = q @ p.T * m.logit_scale()
        for a in range(3):  # the other positives are negatives unless they are a's positive
            cols = [c for c in range(3) if c == a or mp[c] not in tr.exclude(mi[a])]
            row = s[a, cols]
            ((torch.logsumexp(row, 0) - s[a, a]) / 9).backward(retain_graph=True)
    want = {n: p.grad.to_dense() for n, p in m.named_parameters() if p.grad is not None}
    assert want.keys() == {k for k in got if k != "ratio"} and len(want) >= 2
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-6, rtol=1e-5), k
    qn = torch.stack([p.grad.to_dense().norm() for p in m.query_tower.parameters() if p.grad is not None]).norm()
    tn = torch.stack([p.grad.to_dense().norm() for p in m.target_tower.parameters() if p.grad is not None]).norm()
    assert got["ratio"] == pytest.approx(float(qn / tn), rel=1e-5)


def test_one_micro_batch_is_the_plain_step(tmp_path):
    data = write_tiny_multilabel(tmp_path / "ml")
    common = ["--negatives", "cache", "--num-negatives", "3", "--loss", "decoupled"]
    plain = train(data, tmp_path / "plain", *common)
    acc = train(data, tmp_path / "acc", *common, "--memory", "accumulation", "--accumulation", "1")
    assert [r["loss"] for r in acc] == [r["loss"] for r in plain]
    two = train(data, tmp_path / "two", *common, "--memory", "accumulation", "--accumulation", "2")
    assert [r["loss"] for r in two] != [r["loss"] for r in plain]
    assert two[-1]["query_encodes"] == plain[-1]["query_encodes"] == 6 * 8


def test_the_bank_changes_training_only_after_its_warmup(tmp_path):
    data = write_tiny_multilabel(tmp_path / "ml")
    acc = train(data, tmp_path / "acc", "--memory", "accumulation", "--accumulation", "4")
    late = train(data, tmp_path / "late", "--memory", "contaccum", "--accumulation", "4", "--bank-warmup", "6")
    assert [r["loss"] for r in late] == [r["loss"] for r in acc]
    on = train(data, tmp_path / "on", "--memory", "contaccum", "--accumulation", "4", "--bank-warmup", "3")
    assert [r["loss"] for r in on][:3] == [r["loss"] for r in acc][:3]
    assert [r["loss"] for r in on][3:] != [r["loss"] for r in acc][3:]


@pytest.mark.parametrize("loss", ["softmax", "decoupled", "topk", "triplet"])
@pytest.mark.parametrize("bank", ["dual", "passage"])
def test_contaccum_trains_with_every_in_batch_loss(tmp_path, loss, bank):
    data = write_tiny_multilabel(tmp_path / "ml")
    rows = train(data, tmp_path / "r", "--memory", "contaccum", "--accumulation", "2", "--bank-size", "12",
                 "--bank", bank, "--loss", loss, "--negatives", "exact", "--selection", "topk", "--num-negatives", "2",
                 "--no-shared")
    assert all(r["loss"] is not None for r in rows)
    assert rows[-1]["query_encodes"] == 6 * 8 and rows[-1]["grad_norm_ratio"] > 0


def test_contaccum_resume_reproduces_the_uninterrupted_run(tmp_path):
    data = write_tiny_multilabel(tmp_path / "ml")

    def cfg(out):
        return resolve(dict(data=str(data), out=str(out), encoder="static", batch_size=8, lr=0.05, seed=5, quiet=True,
                            zero_shot=False, steps=14, save_every=5, memory="contaccum", accumulation=2, bank_size=10,
                            negatives="exact", selection="topk", num_negatives=2))

    full = tmp_path / "full"
    Trainer(cfg(full)).run()
    run = tmp_path / "crashed"
    with pytest.raises(Crash):
        Trainer(cfg(run), hooks=[CrashAt(8)]).run()  # the bank of step 5 comes back from the checkpoint
    Trainer(cfg(run)).run(resume=True)
    assert [r["loss"] for r in curve(run)] == [r["loss"] for r in curve(full)]
    a, b = (json.loads((p / "metrics.json").read_text()) for p in (full, run))
    assert a["ndcg@10"] == b["ndcg@10"]


@pytest.mark.parametrize("opts,needle", [
    (dict(memory="contaccum", negatives="cache"), "inclusion probabilities are unknown"),
    (dict(memory="contaccum", inbatch=False, negatives="mined"), "in-batch"),
    (dict(memory="accumulation", accumulation=3), "split into --accumulation 3"),
    (dict(memory="plain", accumulation=2), "--accumulation needs"),
    (dict(memory="contaccum", bank="queries"), "--bank 'queries': must be one of dual"),
])
def test_bad_combinations_are_refused(tiny_beir, tmp_path, opts, needle):
    with pytest.raises(ConfigError, match=needle):
        rules.check(resolve(dict(data=str(tiny_beir), out=str(tmp_path), batch_size=8, **opts)))


def test_rows_drawn_in_several_micro_batches_are_one_row_for_the_refreshers(tiny_beir, tmp_path):
    """40 of 160 targets drawn per query in micro-batches of 4: the same rows come up in several micro-batches.
    The write-back sees each row once, writes the embedding the step computed for it, and its staleness is over
    the drawn rows (a concatenation per micro-batch crashed it, or misaligned drawn rows and positives)."""
    from negminer.refreshers import WriteBack, relative_change

    cfg = resolve(dict(data=str(tiny_beir), out=str(tmp_path / "r"), encoder="static", batch_size=12,
                       memory="accumulation", accumulation=3, negatives="cache", num_negatives=40,
                       seed=3, quiet=True, zero_shot=False, steps=1))
    tr = Trainer(cfg)
    tr.setup_sampler()
    seen = {}
    wb = next(r for r in tr.refreshers if isinstance(r, WriteBack))
    write = wb.after_step

    def capture(f):
        seen.update(f=f, before=tr.store.embeddings(f.drawn).clone() if f.drawn is not None else None)
        write(f)

    wb.after_step = capture
    tr.train_step(0)
    f = seen["f"]
    assert len(f.drawn) == len(f.drawn.unique()) and len(f.drawn) == len(f.drawn_emb)
    assert len(f.drawn) < 12 * 40  # the draws did overlap across micro-batches
    assert torch.allclose(tr.store.embeddings(f.drawn), f.drawn_emb.float(), atol=1e-6)
    assert wb.stats["staleness"] == pytest.approx(relative_change(seen["before"], f.drawn_emb.float()), rel=1e-6)
