"""--memory gradcache gives the plain full-batch gradient (MiniLM, dropout on): with one chunk it is the
plain step's; with several, the gradient of the full batch whose forward used the same dropout masks."""

import pytest
import torch

import negminer.pipeline.encoding as encoding
from negminer.config import resolve
from negminer.memory.cached_targets import CachedEncoding
from negminer.train.trainer import Trainer, has_dropout


def step_grads(data, out, monkeypatch=None, **opts):
    cfg = resolve(dict(data=str(data), out=str(out), encoder="minilm", batch_size=6, num_negatives=2,
                       negatives="cache", seed=3, quiet=True, zero_shot=False, query_max_length=16,
                       target_max_length=16, steps=1, **opts))
    tr = Trainer(cfg)
    assert has_dropout(tr.model.target_tower)
    tr.setup_sampler()
    tr.model.train()
    got = {}

    def capture(step, loss=0.0):
        got.update({n: p.grad.detach().clone() for n, p in tr.model.named_parameters() if p.grad is not None})
        return False  # stop before the optimiser: the gradient is what is compared

    tr.optimizer_step = capture
    tr.train_step(0)
    return got, tr.counters


def close(a, b):
    assert a.keys() == b.keys() and len(a) > 50
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), (k, (a[k] - b[k]).abs().max())


def test_one_chunk_equals_the_plain_step(tiny_beir, tmp_path):
    plain, c0 = step_grads(tiny_beir, tmp_path / "a")
    cached, c1 = step_grads(tiny_beir, tmp_path / "b", memory="gradcache", chunk_size=64)  # 6 queries, <= 12 negatives
    close(plain, cached)
    assert c1.query_encodes == 2 * c0.query_encodes  # both passes counted


def test_chunks_equal_the_full_batch_gradient_with_the_same_masks(tiny_beir, tmp_path, monkeypatch):
    cached, _ = step_grads(tiny_beir, tmp_path / "a", memory="gradcache", chunk_size=2)

    def keep_graph(encode, n, chunk, params=None):  # the full batch's graph, forward in the same chunks
        emb = torch.cat([encode(torch.arange(s, min(n, s + chunk))).float() for s in range(0, n, chunk)])
        return CachedEncoding(emb, encode, [], params=None)

    monkeypatch.setattr(encoding, "encode_cached", keep_graph)
    full, _ = step_grads(tiny_beir, tmp_path / "b", memory="gradcache", chunk_size=2)
    close(full, cached)
    # and the masks matter: one chunk draws other dropout masks, so another gradient
    monkeypatch.undo()
    other, _ = step_grads(tiny_beir, tmp_path / "c", memory="gradcache", chunk_size=64)
    with pytest.raises(AssertionError):
        close(other, cached)


@pytest.mark.parametrize("loss,negatives", [(loss, neg) for loss in ("softmax", "decoupled", "topk", "triplet")
                                           for neg in ("inbatch", "cache")] + [("cache-surrogate", "cache")])
def test_every_loss_and_sampler_trains_as_the_plain_batch(tmp_path, loss, negatives):
    """The static tower has no dropout: chunks of 3 give the plain run's loss curve, write-back included."""
    import json

    from negminer.cli import main
    from tinydata import write_tiny_multilabel

    data = write_tiny_multilabel(tmp_path / "ml")
    curves = []
    for mem in (["--memory", "plain"], ["--memory", "gradcache", "--chunk-size", "3"]):
        out = tmp_path / mem[1]
        assert main(["train", "--data", str(data), "--out", str(out), "--encoder", "static", "--steps", "5",
                     "--batch-size", "8", "--lr", "0.05", "--seed", "2", "--quiet", "--no-zero-shot", "--loss", loss,
                     "--negatives", negatives, "--num-negatives", "3", *mem]) == 0
        curves.append([json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()])
    assert [r["loss"] for r in curves[1]] == pytest.approx([r["loss"] for r in curves[0]], rel=1e-4, abs=1e-6)
    assert curves[1][-1]["query_encodes"] == 2 * curves[0][-1]["query_encodes"]
