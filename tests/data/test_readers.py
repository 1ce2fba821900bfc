import gzip
import json

import pytest

from negminer.data import load_dataset
from negminer.data.check import dataset_stats, format_stats


def test_beir_reader(tiny_beir):
    ds = load_dataset(tiny_beir)
    assert ds.num_targets == 160 and len(ds.query_ids) == 160
    assert set(ds.qrels) == {"train", "test"}
    assert len(ds.positives("train")) == 120 and len(ds.positives("test")) == 40
    assert ds.positives("test")["q120"] == {ds.target_index["d120"]: 1}


def test_beir_titles_graded_and_zero_grades(tmp_path):
    root = tmp_path / "b"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        json.dumps({"_id": 1, "title": "T", "text": "body", "metadata": {}}) + "\n"
        + json.dumps({"_id": "2", "text": "only text"}) + "\n")
    (root / "queries.jsonl").write_text(json.dumps({"_id": "a", "text": "q"}) + "\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\na\t1\t2\na\t2\t0\n")
    ds = load_dataset(root)
    assert ds.target_inputs() == ["T body", "only text"]
    assert ds.qrels["test"]["a"] == {"1": 2, "2": 0}
    assert ds.positives("test") == {"a": {0: 2}}


def test_gzip_beir(tmp_path, tiny_beir):
    root = tmp_path / "gz"
    (root / "qrels").mkdir(parents=True)
    for name in ("corpus.jsonl", "queries.jsonl"):
        with gzip.open(root / f"{name}.gz", "wb") as f:
            f.write((tiny_beir / name).read_bytes())
    (root / "qrels" / "test.tsv").write_bytes((tiny_beir / "qrels" / "test.tsv").read_bytes())
    assert load_dataset(root).num_targets == 160


def test_msmarco_reader(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    (root / "collection.tsv").write_text("0\tfirst passage\n1\tsecond passage\n2\tthird passage\n")
    (root / "queries.train.tsv").write_text("10\twhat is first\n11\twhat is second\n")
    (root / "queries.dev.small.tsv").write_text("12\twhat is third\n")
    (root / "qrels.train.tsv").write_text("10\t0\t0\t1\n11\t0\t1\t1\n")  # TREC form
    (root / "qrels.dev.small.tsv").write_text("12\t2\n")  # two columns
    ds = load_dataset(root)
    assert ds.num_targets == 3 and set(ds.qrels) == {"train", "dev.small"}
    assert ds.qrels["train"] == {"10": {"0": 1}, "11": {"1": 1}}
    assert ds.qrels["dev.small"] == {"12": {"2": 1}}


@pytest.mark.parametrize("keys", [("query", "positive", "negative"), ("anchor", "pos", "neg")])
def test_pairs_reader(tmp_path, keys):
    q, p, n = keys
    f = tmp_path / "pairs.jsonl"
    rows = [{q: "what is a cat", p: "a small feline", n: ["a dog", "a car"]},
            {q: "what is a cat", p: ["kitten grown up"]},
            {q: "what is rain", p: "water falling from clouds"}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_dataset(f)
    assert len(ds.query_ids) == 2 and ds.num_targets == 5
    pos = ds.positives("train")
    cat = next(qid for qid in ds.query_ids if ds.query_texts[ds.query_index[qid]] == "what is a cat")
    assert len(pos[cat]) == 2 and len(ds.hard_negatives[cat]) == 2
    assert set(ds.hard_negatives[cat]).isdisjoint(ds.qrels["train"][cat])


def test_pairs_folder_splits(tmp_path):
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text(json.dumps({"query": f"q {split}", "positive": f"t {split}"}) + "\n")
    ds = load_dataset(tmp_path)
    assert set(ds.qrels) == {"train", "test"}


def test_stats(tiny_beir):
    s = dataset_stats(load_dataset(tiny_beir))
    assert s["targets"] == 160 and s["splits"]["train"]["queries_with_positives"] == 120
    assert s["splits"]["test"]["positives_per_query"] == {"mean": 1.0, "min": 1, "max": 1}
    assert s["query_length"]["words"]["max"] >= s["query_length"]["words"]["median"]
    assert "train" in format_stats(s)


def test_unknown_layout(tmp_path):
    from negminer.errors import DataError

    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="unknown dataset layout"):
        load_dataset(tmp_path)
