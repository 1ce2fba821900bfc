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


def test_msmarco_headers_titles_and_repeated_dev_queries(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    (root / "collection.tsv").write_text("pid\ttitle\ttext\n0\tCats\tsmall felines\n1\t\tdogs bark\n")
    (root / "queries.dev.tsv").write_text("qid\tquery\n5\twhat is a cat\n6\twho barks\n")
    (root / "queries.dev.small.tsv").write_text("5\twhat is a cat\n")  # a subset of dev: same text
    (root / "qrels.dev.tsv").write_text("query-id\tcorpus-id\tscore\n5\t0\t2\n6\t1\t1\n")  # 3 columns
    (root / "qrels.dev.small.tsv").write_text("qid\tQ0\tpid\trel\n5\tQ0\t0\t1\n")
    ds = load_dataset(root)
    assert ds.target_ids == ["0", "1"] and ds.target_inputs() == ["Cats small felines", "dogs bark"]
    assert ds.query_ids == ["5", "6"]
    assert ds.qrels == {"dev": {"5": {"0": 2}, "6": {"1": 1}}, "dev.small": {"5": {"0": 1}}}


def test_beir_qrels_without_header_keeps_first_row(tmp_path):
    root = tmp_path / "b"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(json.dumps({"_id": "d", "title": "only a title", "text": ""}) + "\n")
    (root / "queries.jsonl").write_text(json.dumps({"_id": "query1", "text": "q"}) + "\n")
    (root / "qrels" / "test.tsv").write_text("query1\td\t1\n")
    ds = load_dataset(root)
    assert ds.qrels == {"test": {"query1": {"d": 1}}} and ds.target_inputs() == ["only a title"]


def test_pairs_negatives_deduplicated_and_never_positive(tmp_path):
    f = tmp_path / "only.jsonl"  # a folder with one .jsonl of any name is read as train
    rows = [{"query": "q", "pos": ["a"], "neg": ["b", "a", "b"]}, {"query": "q", "pos": "c", "negative": "d"}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_dataset(tmp_path)
    (qid,) = ds.query_ids
    text = dict(zip(ds.target_ids, ds.target_texts))
    assert [text[t] for t in ds.hard_negatives[qid]] == ["b", "d"]
    assert sorted(text[t] for t in ds.qrels["train"][qid]) == ["a", "c"]
    assert load_dataset(f).target_ids == ds.target_ids  # ids are hashes of the text: stable


def test_pairs_gzip_and_validation_split(tmp_path):
    with gzip.open(tmp_path / "train.jsonl.gz", "wt") as g:
        g.write(json.dumps({"anchor": "x", "positive": "y"}) + "\n")
    (tmp_path / "validation.jsonl").write_text(json.dumps({"question": "z", "positives": ["w"]}) + "\n")
    ds = load_dataset(tmp_path)
    assert set(ds.qrels) == {"train", "dev"} and sorted(ds.target_texts) == ["w", "y"]


def test_stats_counts_and_format(tmp_path):
    root = tmp_path / "b"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": f"d{i}", "title": "T", "text": " ".join(["w"] * i)}) + "\n" for i in range(1, 5)))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": "a b"}) + "\n" for i in range(3)))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td1\t1\nq0\td2\t2\nq1\td3\t1\nq2\td4\t0\n")
    s = dataset_stats(load_dataset(root))
    t = s["splits"]["test"]
    assert t["queries_with_positives"] == 2 and t["judged_pairs"] == 4 and t["queries_judged"] == 3
    assert t["positives_per_query"] == {"mean": 1.5, "min": 1, "max": 2}
    assert s["target_length"]["words"] == {"mean": 3.5, "median": 3.5, "p95": 4.85, "max": 5}  # "T w ..." 2..5
    assert s["query_length"]["chars"]["max"] == 3
    table = format_stats(s)
    assert "test" in table and "target words" in table and "query chars" in table
