"""sentence-transformers' InformationRetrievalEvaluator on a saved negminer model gives `negminer eval`'s numbers
(#27): ndcg@10, mrr@10, recall@1/10/100, p@1, p@5, to 1e-6.

The two agree where their definitions meet: binary relevance (sentence-transformers' relevant_docs is a set:
negminer's ndcg@10 takes graded gains, so graded qrels would differ), no tied scores at a cut-off (ties are
ordered by target id in negminer, trec_eval's way, and as torch.topk leaves them in sentence-transformers),
and the same queries (those with a relevant target in the split)."""

from __future__ import annotations

import json
import warnings

import pytest
from tinydata import write_tiny_multilabel

from negminer.cli import main
from negminer.data import load_dataset

PAIRS = {"ndcg@10": "ndcg@10", "mrr@10": "mrr@10", "recall@1": "recall@1", "recall@10": "recall@10",
         "recall@100": "recall@100", "p@1": "precision@1", "p@5": "precision@5"}


def _evaluator():
    pytest.importorskip("sentence_transformers")
    try:  # sentence-transformers >= 6 moved it; the old path still works, with a DeprecationWarning
        from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    except ImportError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from sentence_transformers.evaluation import InformationRetrievalEvaluator
    return InformationRetrievalEvaluator


@pytest.mark.parametrize("data", ["tiny_beir", "multilabel"])
def test_st_evaluator_gives_negminer_eval_numbers(tiny_beir, tmp_path, data):
    from sentence_transformers import SentenceTransformer

    Evaluator = _evaluator()
    path = tiny_beir if data == "tiny_beir" else write_tiny_multilabel(tmp_path / "ml")
    run = tmp_path / "run"
    assert main(["train", "--data", str(path), "--out", str(run), "--encoder", "static", "--steps", "2",
                 "--batch-size", "8", "--lr", "0.05", "--seed", "5", "--quiet", "--no-zero-shot",
                 "--num-negatives", "4"]) == 0
    assert main(["eval", "--model", str(run / "model"), "--data", str(path), "--split", "test",
                 "--out", str(tmp_path / "ev"), "--quiet"]) == 0
    ours = json.loads((tmp_path / "ev" / "metrics.json").read_text())

    ds = load_dataset(path)
    pos = ds.positives("test")
    assert all(g == 1 for q in pos.values() for g in q.values())  # binary relevance: the definitions agree
    ev = Evaluator(queries={q: ds.query_texts[ds.query_index[q]] for q in pos},
                   corpus=dict(zip(ds.target_ids, ds.target_inputs())),
                   relevant_docs={q: {ds.target_ids[r] for r in rows} for q, rows in pos.items()},
                   mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1, 10], precision_recall_at_k=[1, 5, 10, 100],
                   map_at_k=[100], show_progress_bar=False, name="nm")
    theirs = ev(SentenceTransformer(str(run / "model"), device="cpu"))
    assert ours["num_queries"] == len(pos)
    for mine_key, st_key in PAIRS.items():
        assert abs(ours[mine_key] - theirs[f"nm_cosine_{st_key}"]) < 1e-6, (mine_key, ours[mine_key], theirs)
    assert 0 < ours["ndcg@10"] < 1  # a ranking with some hits and some misses
