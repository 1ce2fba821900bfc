"""evaluate(): the right texts are encoded, the run is the exact ranking, files are written."""

import json
import re
import zlib
from pathlib import Path

import pytest
import torch

from negminer.data.dataset import Dataset
from negminer.errors import ConfigError
from negminer.eval.evaluate import XMC_KEYS, eval_command, evaluate
from negminer.eval.metrics import METRIC_KEYS, compute_metrics
from negminer.eval.runfile import read_run

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


class HashModel:
    """Bag of words hashed into ``dim`` buckets, L2-normalised; records what it was asked to encode."""

    def __init__(self, dim=2048):
        self.dim, self.calls = dim, []

    def _encode(self, texts, batch_size=128, progress=False):
        texts = list(texts)
        self.calls.append(texts)
        rows, cols = [], []
        for n, t in enumerate(texts):
            for w in re.findall(r"\w+", t.lower()):
                rows.append(n)
                cols.append(zlib.crc32(w.encode()) % self.dim)
        out = torch.zeros(len(texts), self.dim)
        out.index_put_((torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)),
                       torch.ones(len(rows)), accumulate=True)
        return torch.nn.functional.normalize(out, dim=1)

    encode_queries = encode_targets = _encode


def small_dataset():
    words = [f"w{i}" for i in range(60)]
    tids = [f"t{i}" for i in range(30)]
    titles = [f"title{i}" if i % 2 else "" for i in range(30)]
    texts = [" ".join(words[i:i + 4]) for i in range(30)]
    qids = [f"q{i}" for i in range(8)]
    qtexts = [" ".join(words[3 * i:3 * i + 3]) for i in range(8)]
    qrels = {"test": {"q0": {"t0": 2, "t1": 1}, "q1": {"t3": 1, "t9": 0}, "q2": {"t5": 0},  # q2: nothing relevant
                      "q4": {"t12": 3, "t20": 1, "t29": 2}, "q7": {"t21": 1}},
             "train": {"q3": {"t9": 1}}}
    return Dataset("small", tids, texts, titles, qids, qtexts, qrels)


def test_evaluate_encodes_the_right_texts_and_ranks_exactly(tmp_path):
    ds, model = small_dataset(), HashModel()
    m = evaluate(model, ds, split="test", k=10, batch_size=4, out_dir=tmp_path / "ev")
    assert model.calls[0] == ds.target_inputs() and model.calls[0][1] == "title1 w1 w2 w3 w4"
    assert model.calls[1] == ["w0 w1 w2", "w3 w4 w5", "w12 w13 w14", "w21 w22 w23"]  # queries with a positive
    assert list(m) == list(METRIC_KEYS) + list(XMC_KEYS) and m["num_queries"] == 4  # q0, q4: multi-label
    assert m.stats["queries_encoded"] == 4 and m.stats["targets_encoded"] == 30
    # run.trec holds the brute-force ranking; metrics.json holds exactly the eight metrics
    run = read_run(tmp_path / "ev" / "run.trec")
    q, t = model._encode(model.calls[1]), model._encode(ds.target_inputs())
    scores = q @ t.T
    for n, qid in enumerate(["q0", "q1", "q4", "q7"]):
        got = [ds.target_index[d] for d, _ in run[qid]]
        assert len(got) == 10
        assert torch.allclose(scores[n, got], scores[n].topk(10).values)
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert list(saved) == list(METRIC_KEYS) + list(XMC_KEYS) and saved == dict(m)
    assert {k: m[k] for k in METRIC_KEYS} == pytest.approx(compute_metrics(run, ds.qrels["test"]))
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == ["metrics.json", "per_query.jsonl", "run.trec"]


def test_oracle_model_scores_one():
    """A model that maps each query onto its best positive gets perfect recall@1 / nDCG."""
    ds = small_dataset()
    best = {"w0 w1 w2": 0, "w3 w4 w5": 3, "w12 w13 w14": 12, "w21 w22 w23": 21}

    class Oracle:
        def encode_targets(self, texts, batch_size=128, progress=False):
            return torch.eye(len(texts))

        def encode_queries(self, texts, batch_size=128, progress=False):
            return torch.eye(30)[[best[x] for x in texts]]

    m = evaluate(Oracle(), ds)
    assert m["p@1"] == 1.0 and m["mrr@10"] == 1.0
    assert m["recall@1"] == pytest.approx((1 / 2 + 1 + 1 / 3 + 1) / 4)
    assert m["recall@100"] == 1.0  # k capped at 30 targets: everything retrieved


def test_unknown_split_is_a_config_error():
    with pytest.raises(ConfigError, match="no split 'dev'"):
        evaluate(HashModel(), small_dataset(), split="dev")


def test_scifact_exact_and_faiss_agree():
    """A lexical model on real data: sensible figures, identical for both backends."""
    if not (SHARED_DATA / "scifact").is_dir():
        pytest.skip(f"SciFact not found at {SHARED_DATA / 'scifact'} (the shared/ folder beside the repo)")
    from negminer.data.load import load_dataset

    ds = load_dataset(SHARED_DATA / "scifact")
    model = HashModel()
    exact = evaluate(model, ds, split="test")
    assert exact["num_queries"] == 300
    assert 0.3 < exact["ndcg@10"] < 0.8 and exact["recall@100"] > exact["recall@10"] > exact["recall@1"]
    pytest.importorskip("faiss")
    assert evaluate(model, ds, split="test", backend="faiss") == pytest.approx(exact, abs=1e-6)


def test_eval_command_on_a_saved_model(tiny_beir, tmp_path, capsys):
    encoders = pytest.importorskip("negminer.encoders")
    try:
        model = encoders.build_encoder("static")
    except ConfigError as e:
        pytest.skip(f"no default static tower: {e}")
    model.save(tmp_path / "model")
    assert eval_command(tmp_path / "model", str(tiny_beir), out=tmp_path / "ev", quiet=True) == 0
    head, vals = capsys.readouterr().out.strip().splitlines()
    assert head.split() == list(METRIC_KEYS) and vals.split()[-1] == "40"
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["num_queries"] == 40 and [float(v) for v in vals.split()[:-1]] == pytest.approx(
        [saved[k] for k in METRIC_KEYS[:-1]], abs=1e-4)
    with pytest.raises(ConfigError, match="no split"):
        eval_command(tmp_path / "model", str(tiny_beir), split="dev", quiet=True)
