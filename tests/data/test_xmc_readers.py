"""Extreme Classification Repository layouts: label-feature JSON, label matrices with raw text or bag of
words, the original train.txt / test.txt, filter_labels files, and every bad line named by file, line, field."""

import gzip
import json

import pytest

from negminer.cli import main
from negminer.data import load_dataset
from negminer.data.xmc import xmc_layout
from negminer.errors import DataError


def write(root, name, body):
    p = root / name
    p.parent.mkdir(parents=True, exist_ok=True)
    data = body.encode() if isinstance(body, str) else body
    if name.endswith(".gz"):
        with gzip.open(p, "wb") as f:
            f.write(data)
    else:
        p.write_bytes(data)
    return p


def jsonl(*records):
    return "".join(json.dumps(r) + "\n" for r in records)


LABELS = [{"uid": "L0", "title": "red shoe"}, {"uid": "L1", "title": "blue hat", "content": "a hat, blue"},
          {"uid": "L2", "title": ""}, {"uid": "L0", "title": "red shoe again"}]


def lf_folder(root):
    """LF-*: lbl.json.gz (4 labels, a repeated uid), trn.json.gz, tst.json (uncompressed), filters."""
    write(root, "lbl.json.gz", jsonl(*LABELS))
    write(root, "trn.json.gz", jsonl(
        {"uid": "A", "title": "shoes", "content": "for running", "target_ind": [0, 3], "target_rel": [1.0, 2.6]},
        {"uid": "B", "title": "hats", "target_ind": [1]},
        {"uid": "A", "title": "again A", "target_ind": [], "target_rel": []}))
    write(root, "tst.json", jsonl({"uid": "C", "title": "blue cap", "target_ind": [1, 2], "target_rel": [1, 0]},
                                  {"uid": 7, "title": "nothing", "target_ind": [2]}))
    write(root, "filter_labels_test.txt", "0 1\n1\t2\n\n")
    write(root, "filter_labels_train.txt", "2 0\n")
    return root


def test_label_feature_json(tmp_path):
    ds = load_dataset(lf_folder(tmp_path / "LF-Tiny-4"))
    assert ds.name == "LF-Tiny-4" and ds.xmc and ds.is_multilabel()
    assert ds.target_ids == ["L0", "L1", "L2", "L0~3"]
    assert ds.target_titles == ["", "blue hat", "", ""]
    assert ds.target_texts == ["red shoe", "a hat, blue", "label 2", "red shoe again"]
    assert ds.target_inputs()[1] == "blue hat a hat, blue"
    assert ds.query_ids == ["A", "B", "A~trn2", "C", "7"]
    assert ds.query_texts[:3] == ["shoes for running", "hats", "again A"]
    assert list(ds.qrels) == ["train", "test"]
    assert ds.qrels["train"] == {"A": {"L0": 1, "L0~3": 3}, "B": {"L1": 1}, "A~trn2": {}}
    assert ds.qrels["test"] == {"C": {"L1": 1, "L2": 0}, "7": {"L2": 1}}
    assert ds.positives("test") == {"C": {1: 1}, "7": {2: 1}}
    assert ds.filter_pairs == {"test": {("C", "L1"), ("7", "L2")}, "train": {("A~trn2", "L0")}}


RAW_Y = "L10->red shoe\nL11->blue hat\nL12->\n"


@pytest.mark.parametrize("where", ["raw/", ""])
def test_raw_text_with_label_matrices(tmp_path, where):
    root = tmp_path / "ds"
    write(root, f"{where}trn_X.txt", "running shoes\n\nhats for caf\xe9s\n")
    write(root, f"{where}tst_X.txt", b"blue caps \xe9t\xe9\n")  # Latin-1, as the repository's tools write
    write(root, f"{where}Y.txt", RAW_Y)
    write(root, "trn_X_Y.txt", "3 3\n0:1 1:1.000000\n\n1:1\n")
    write(root, "tst_X_Y.txt", "1 3\n1:1 2:0.4\n")
    write(root, "filter_labels_tst.txt", "0 2\n")
    ds = load_dataset(root)
    assert xmc_layout(root) == "matrix" and ds.xmc
    assert ds.target_ids == ["L10", "L11", "L12"] and ds.target_texts == ["red shoe", "blue hat", "label 2"]
    assert ds.query_ids == ["trn0", "trn1", "trn2", "tst0"]
    assert ds.query_texts == ["running shoes", "", "hats for cafés", "blue caps été"]
    assert ds.qrels["train"] == {"trn0": {"L10": 1, "L11": 1}, "trn1": {}, "trn2": {"L11": 1}}
    assert ds.qrels["test"] == {"tst0": {"L11": 1, "L12": 1}}
    assert ds.filter_pairs == {"test": {("tst0", "L12")}}


def test_raw_text_uids_name_the_rows(tmp_path):
    root = tmp_path / "ds"
    write(root, "raw/trn_X.txt.gz", "p1->first -> with an arrow\np2->\n")
    write(root, "raw/Y.txt", "plain label -> not a uid\nsecond\n")  # line 1 is not uid->text: no uids
    write(root, "trn_X_Y.txt", "2 2\n0:1\n1:1\n")
    ds = load_dataset(root)
    assert ds.query_ids == ["p1", "p2"] and ds.query_texts == ["first -> with an arrow", ""]
    assert ds.target_ids == ["0", "1"] and ds.target_texts == ["plain label -> not a uid", "second"]
    assert set(ds.qrels) == {"train"}


def test_bag_of_words_with_names(tmp_path):
    root = tmp_path / "bow"
    write(root, "trn_X_Xf.txt", "2 4\n0:0.5 3:1.5 2:0.5\n\n")
    write(root, "tst_X_Xf.txt", "1 4\n1:2 2:0\n")
    write(root, "trn_X_Y.txt", "2 2\n0:1\n0:1 1:1\n")
    write(root, "tst_X_Y.txt", "1 2\n1:1\n")
    write(root, "Xf.txt", "apple\nbanana\ncherry\ndate\n")
    write(root, "Y.txt", "fruit\nyellow fruit\n")
    ds = load_dataset(root)
    assert ds.query_texts == ["date apple cherry", "", "banana"]  # decreasing value, ties by index
    assert ds.target_texts == ["fruit", "yellow fruit"] and ds.target_ids == ["0", "1"]
    assert ds.qrels["train"] == {"trn0": {"0": 1}, "trn1": {"0": 1, "1": 1}} and ds.qrels["test"] == {"tst0": {"1": 1}}
    assert ds.filter_pairs == {} and ds.is_multilabel()


def test_bag_of_words_without_names(tmp_path):
    root = tmp_path / "bow"
    write(root, "tst_X_Xf.txt", "2 5\n4:1 0:3\n2:1\n")
    write(root, "tst_X_Y.txt", "2 3\n2:1\n0:1\n")
    ds = load_dataset(root)
    assert ds.query_texts == ["f0 f4", "f2"] and ds.target_texts == ["label 0", "label 1", "label 2"]
    assert list(ds.qrels) == ["test"] and ds.query_ids == ["tst0", "tst1"]


def test_original_train_test_txt(tmp_path):
    root = tmp_path / "Eurlex-Tiny"
    write(root, "train.txt", "3 4 3\n0,2 1:0.5 3:1\n 2:1\n1\n")
    write(root, "test.txt", "1 4 3\n2 0:1\n")
    write(root, "filter_labels_test.txt", "0 2\n")
    ds = load_dataset(root)
    assert xmc_layout(root) == "classic"
    assert ds.query_texts == ["f3 f1", "f2", "", "f0"]
    assert ds.qrels["train"] == {"trn0": {"0": 1, "2": 1}, "trn1": {}, "trn2": {"1": 1}}
    assert ds.qrels["test"] == {"tst0": {"2": 1}} and ds.filter_pairs == {"test": {("tst0", "2")}}


def test_not_xmc_folders_are_left_to_the_other_readers(tmp_path, tiny_beir):
    assert xmc_layout(tiny_beir) is None
    (tmp_path / "train.txt").write_text("just some notes\n")
    assert xmc_layout(tmp_path) is None
    (tmp_path / "test.txt").write_bytes(b"caf\xe9 1 2\n")
    assert xmc_layout(tmp_path) is None
    with pytest.raises(DataError, match="unknown dataset layout"):
        load_dataset(tmp_path)


def test_data_check_on_an_xmc_folder(tmp_path, capsys):
    root = lf_folder(tmp_path / "LF-Tiny-4")
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "targets 4" in out and "train" in out and "test" in out
    assert main(["data", "check", str(root), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["splits"]["test"]["queries_with_positives"] == 2 and stats["splits"]["train"]["queries_judged"] == 3


def _matrix_case(root, name, body):
    """A valid raw-text folder, then one file replaced by ``body`` (None: removed)."""
    files = {"raw/trn_X.txt": "a\nb\n", "raw/tst_X.txt": "c\n", "raw/Y.txt": "x\ny\nz\n",
             "trn_X_Y.txt": "2 3\n0:1\n1:1 2:1\n", "tst_X_Y.txt": "1 3\n2:1\n"}
    files[name] = body
    for n, b in files.items():
        if b is not None:
            write(root, n, b)
    return root


MATRIX_CASES = [  # file, new body, file in message, line, field, problem
    ("trn_X_Y.txt", "2 3\n0:1\n1-1\n", "trn_X_Y.txt", 3, "label", "malformed 'label:value' pair '1-1'"),
    ("trn_X_Y.txt", "2 3\n0:1\n1:one\n", "trn_X_Y.txt", 3, "label", "not a number"),
    ("trn_X_Y.txt", "2 3\n0:1\n3:1\n", "trn_X_Y.txt", 3, "label", "label index 3 out of range"),
    ("trn_X_Y.txt", "2 3\n0:1\n:1\n", "trn_X_Y.txt", 3, "label", "malformed"),
    ("trn_X_Y.txt", "two 3\n0:1\n1:1\n", "trn_X_Y.txt", 1, "header", "expected a header 'num_rows num_labels'"),
    ("trn_X_Y.txt", "", "trn_X_Y.txt", 1, "header", "found an empty file"),
    ("trn_X_Y.txt", "3 3\n0:1\n1:1\n", "trn_X_Y.txt", 3, "num_rows", "2 rows, but the header of trn_X_Y.txt says 3"),
    ("trn_X_Y.txt", "1 3\n0:1\n1:1\n", "trn_X_Y.txt", 3, "num_rows", "more rows than the 1"),
    ("tst_X_Y.txt", "1 4\n2:1\n", "tst_X_Y.txt", 1, "num_labels", "4 labels, but trn_X_Y.txt has 3"),
    ("raw/trn_X.txt", "a\n", "trn_X.txt", 1, "num_rows", "1 rows, but trn_X_Y.txt's header says 2"),
    ("raw/trn_X.txt", "a\nb\nc\n", "trn_X.txt", 3, "num_rows", "more rows than the 2"),
    ("raw/Y.txt", "u1->x\nu2->y\nz\n", "Y.txt", 3, "uid", "expected 'uid->text'"),
    ("raw/Y.txt", "x\ny\n", "Y.txt", 2, "num_rows", "2 rows, but the header of trn_X_Y.txt says 3"),
    ("trn_X_Y.txt", b"2 3\n0:1\n1:1\xff\n", "trn_X_Y.txt", 3, None, "not valid UTF-8"),
]


@pytest.mark.parametrize("name,body,file_part,line,field,problem", MATRIX_CASES, ids=[c[-1][:30] for c in MATRIX_CASES])
def test_bad_matrix_input(tmp_path, name, body, file_part, line, field, problem, capsys):
    root = _matrix_case(tmp_path / "bad", name, body)
    with pytest.raises(DataError) as e:
        load_dataset(root)
    msg = str(e.value)
    assert file_part in msg and f":{line}:" in msg and problem in msg, msg
    assert (f"field '{field}'" in msg) if field else "field" not in msg, msg
    assert main(["data", "check", str(root)]) == 2
    assert problem in capsys.readouterr().err


def test_missing_files_are_named(tmp_path):
    with pytest.raises(DataError, match=r"raw/Y.txt: file not found"):
        load_dataset(_matrix_case(tmp_path / "a", "raw/Y.txt", None))
    root = tmp_path / "b"
    write(root, "trn_X_Y.txt", "1 2\n0:1\n")
    with pytest.raises(DataError, match=r"raw/trn_X.txt: file not found \(nor trn_X.txt, trn_X_Xf.txt\)"):
        load_dataset(root)
    root = tmp_path / "c"
    write(root, "trn.json.gz", jsonl({"uid": "a", "title": "t", "target_ind": [0]}))
    with pytest.raises(DataError, match=r"lbl.json.gz: file not found"):
        load_dataset(root)
    root = tmp_path / "d"
    write(root, "lbl.json.gz", jsonl(*LABELS))
    with pytest.raises(DataError, match=r"trn.json.gz: file not found \(nor tst.json.gz\)"):
        load_dataset(root)


JSON_CASES = [  # file, line, new record, field, problem
    ("lbl.json.gz", 2, '{"uid": "L1", "title": ', None, "malformed JSON"),
    ("lbl.json.gz", 3, '{"uid": "L2"}', "title", "missing"),
    ("lbl.json.gz", 1, '{"uid": "L0", "title": ["x"]}', "title", "expected a string"),
    ("trn.json.gz", 2, '{"uid": "B", "title": "hats"}', "target_ind", "missing"),
    ("trn.json.gz", 2, '{"uid": "B", "title": "hats", "target_ind": [9]}', "target_ind", "label index 9 out of range"),
    ("trn.json.gz", 2, '{"uid": "B", "title": "hats", "target_ind": ["1"]}', "target_ind", "expected a list"),
    ("trn.json.gz", 1, '{"uid": "A", "title": "s", "target_ind": [0, 1], "target_rel": [1]}', "target_rel",
     "expected 2 numbers"),
    ("trn.json.gz", 1, '{"uid": "A", "target_ind": [0]}', "title", "missing"),
    ("tst.json", 2, '[1, 2]', None, "expected a JSON object"),
]


@pytest.mark.parametrize("name,line,new,field,problem", JSON_CASES, ids=[f"{c[0]}-{c[-1][:20]}" for c in JSON_CASES])
def test_bad_label_feature_json(tmp_path, name, line, new, field, problem):
    root = lf_folder(tmp_path / "bad")
    p = root / name
    opener = gzip.open if name.endswith(".gz") else open
    with opener(p, "rt") as f:
        rows = f.read().splitlines()
    rows[line - 1] = new
    write(root, name, "\n".join(rows) + "\n")
    with pytest.raises(DataError) as e:
        load_dataset(root)
    msg = str(e.value)
    assert name in msg and f":{line}:" in msg and problem in msg, msg
    assert (f"field '{field}'" in msg) if field else "field" not in msg, msg


BOW_CASES = [  # file, body, line, field, problem
    ("trn_X_Xf.txt", "2 4\n0:1\n4:1\n", 3, "feature", "feature index 4 out of range (there are 4 features)"),
    ("trn_X_Xf.txt", "3 4\n0:1\n1:1\n2:1\n", 1, "num_rows", "3 rows, but trn_X_Y.txt has 2"),
    ("trn_X_Xf.txt", "2 4\n0:1 1:inf\n1:1\n", 2, "feature", "not a number"),
    ("tst_X_Xf.txt", "1 5\n0:1\n", 1, "num_features", "5 features, but the other split has 4"),
    ("Xf.txt", "a\nb\nc\n", 3, "num_rows", "3 rows, but the bag-of-words header says 4"),
    ("filter_labels_test.txt", "0 1\n1 1\n", 2, "row", "row index 1 out of range (there are 1 rows)"),
    ("filter_labels_test.txt", "0 5\n", 1, "label", "label index 5 out of range"),
    ("filter_labels_test.txt", "0 1 2\n", 1, "row", "expected 'row label' (two integers)"),
    ("filter_labels_test.txt", "0 x\n", 1, "row", "expected 'row label'"),
]


@pytest.mark.parametrize("name,body,line,field,problem", BOW_CASES, ids=[c[-1][:30] for c in BOW_CASES])
def test_bad_bag_of_words_and_filters(tmp_path, name, body, line, field, problem):
    root = tmp_path / "bow"
    files = {"trn_X_Xf.txt": "2 4\n0:1\n1:1\n", "tst_X_Xf.txt": "1 4\n3:1\n", "trn_X_Y.txt": "2 2\n0:1\n1:1\n",
             "tst_X_Y.txt": "1 2\n1:1\n", "Xf.txt": "a\nb\nc\nd\n", "filter_labels_test.txt": "0 1\n"}
    files[name] = body
    for n, b in files.items():
        write(root, n, b)
    with pytest.raises(DataError) as e:
        load_dataset(root)
    msg = str(e.value)
    assert f"{name}:{line}: field '{field}': {problem}" in msg, msg


def test_bad_original_format_and_filter_without_split(tmp_path):
    root = tmp_path / "c"
    write(root, "train.txt", "2 4 3\n0,x 1:1\n1 2:1\n")
    with pytest.raises(DataError, match=r"train.txt:2: field 'label': malformed label list '0,x'"):
        load_dataset(root)
    write(root, "train.txt", "2 4 3\n0 1:1\n5 2:1\n")
    with pytest.raises(DataError, match=r"train.txt:3: field 'label': label index 5 out of range"):
        load_dataset(root)
    write(root, "train.txt", "1 4 3\n0 1:1\n")
    write(root, "test.txt", "1 4 2\n0 1:1\n")
    with pytest.raises(DataError, match=r"test.txt:1: field 'header': 4 features and 2 labels, but train.txt"):
        load_dataset(root)
    write(root, "test.txt", "1 4 3\n0 1:1\n")
    write(root, "filter_labels_trn.txt", "0 0\n")
    assert load_dataset(root).filter_pairs == {"train": {("trn0", "0")}}
    (root / "test.txt").unlink()
    write(root, "filter_labels_tst.txt", "0 0\n")
    with pytest.raises(DataError, match=r"filter_labels_tst.txt: no test split to apply it to"):
        load_dataset(root)


def test_beir_data_is_not_xmc(tiny_beir):
    ds = load_dataset(tiny_beir)
    assert not ds.xmc and ds.filter_pairs == {} and not ds.is_multilabel()  # one positive per query


def test_real_multilabel_data_is_detected(shared_data):
    if not (shared_data / "gcide-senses").is_dir():
        pytest.skip(f"gcide-senses not found in {shared_data}")
    ds = load_dataset(shared_data / "gcide-senses")
    assert not ds.xmc and ds.filter_pairs == {}
    assert ds.is_multilabel() and max(len(p) for p in ds.positives("train").values()) > 1


def test_scipy_npz_label_matrices_as_dexml_prepares_them(tmp_path):
    """DEXML's folders: raw/trn_X.txt, raw/tst_X.txt, raw/Y.txt with Y.trn.npz / Y.tst.npz; the same dataset
    as the trn_X_Y.txt form."""
    sp = pytest.importorskip("scipy.sparse")
    root, twin = tmp_path / "npz", tmp_path / "txt"
    for r in (root, twin):
        write(r, "raw/trn_X.txt", "running shoes\nhats\n")
        write(r, "raw/tst_X.txt", "blue caps\n")
        write(r, "raw/Y.txt", "red shoe\nblue hat\ncap\n")
    sp.save_npz(root / "Y.trn.npz", sp.csr_matrix(([1.0, 1.0, 1.0], ([0, 0, 1], [0, 1, 1])), shape=(2, 3)))
    sp.save_npz(root / "Y.tst.npz", sp.csr_matrix(([1.0, 1.0], ([0, 0], [1, 2])), shape=(1, 3)))
    write(twin, "trn_X_Y.txt", "2 3\n0:1 1:1\n1:1\n")
    write(twin, "tst_X_Y.txt", "1 3\n1:1 2:1\n")
    a, b = load_dataset(root), load_dataset(twin)
    assert xmc_layout(root) == "matrix"
    assert (a.qrels, a.query_texts, a.target_texts) == (b.qrels, b.query_texts, b.target_texts)
    (root / "Y.tst.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="Y.tst.npz.*not a scipy sparse matrix"):
        load_dataset(root)
