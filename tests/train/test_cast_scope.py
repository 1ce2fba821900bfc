"""bf16 autocast casts the weights once per micro-batch (Trainer.cast_scope): the gradients are those of one
autocast region per encode, and every parameter still gets its gradient (a cast cached without gradient
would silently drop it)."""

from contextlib import nullcontext

import pytest

from negminer.config import resolve
from negminer.train.trainer import Trainer


def grads_of_first_step(tiny_beir, tmp_path, scoped: bool, **kw):
    opts = {"data": str(tiny_beir), "out": str(tmp_path / f"run{scoped}"), "encoder": "minilm", "batch_size": 6,
            "seed": 3, "quiet": True, "zero_shot": False, "query_max_length": 12, "target_max_length": 16,
            "steps": 1, "bf16": True, "negatives": "cache", "num_negatives": 2, "write_back": "train", **kw}
    tr = Trainer(resolve(opts), hooks=[])
    tr.setup_sampler()
    tr.model.train()
    if not scoped:
        tr.cast_scope = nullcontext
    got = {}

    def capture(step, loss):
        got.update({n: p.grad.detach().clone() for n, p in tr.model.named_parameters() if p.grad is not None})
        return False  # nothing applied

    tr.optimizer_step = capture
    tr.train_step(0)
    return got, [n for n, p in tr.model.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("kw", [{}, {"memory": "accumulation", "accumulation": 2}], ids=["plain", "accumulation"])
def test_one_cast_per_micro_batch_gives_the_same_gradient(tiny_beir, tmp_path, kw):
    a, names = grads_of_first_step(tiny_beir, tmp_path, scoped=True, **kw)
    b, _ = grads_of_first_step(tiny_beir, tmp_path, scoped=False, **kw)
    assert set(a) == set(b) and len(a) > 0.9 * len(names)  # (the pooler gets none either way)
    assert all(a[n].abs().sum() > 0 for n in a if "word_embeddings" in n or "dense" in n)
    # one cast per micro-batch: a shared weight's gradients from the query, positive and negative forwards add up
    # on its bf16 copy before the one conversion to fp32 (as in one autocast region, sentence-transformers' case),
    # instead of each converted first: equal to within bf16's rounding
    err = {n: float((a[n] - b[n]).norm() / b[n].norm()) for n in a}
    assert max(err.values()) < 1e-2, max(err, key=err.get)
