"""Every kind of bad input stops with a message naming file, line and problem (exit 2 on the CLI)."""

import json

import pytest

from negminer.cli import main
from negminer.data import load_dataset
from negminer.errors import DataError
from tinydata import write_tiny_beir


def _corrupt(root, name, line_no, new):
    p = root / name
    lines = p.read_bytes().split(b"\n")
    lines[line_no - 1] = new if isinstance(new, bytes) else new.encode()
    p.write_bytes(b"\n".join(lines))


CASES = [
    ("corpus.jsonl", 3, '{"_id": "d2", "text": ', "corpus.jsonl", 3, "malformed JSON"),
    ("corpus.jsonl", 4, '{"_id": "d3", "title": "x"}', "corpus.jsonl", 4, "field 'text': missing"),
    ("corpus.jsonl", 5, '{"_id": "d4", "title": "", "text": "  "}', "corpus.jsonl", 5, "empty text"),
    ("corpus.jsonl", 6, '{"_id": "d0", "title": "", "text": "again"}', "corpus.jsonl", 6, "duplicate target id 'd0'"),
    ("corpus.jsonl", 7, b'{"_id": "d6", "text": "caf\xe9"}', "corpus.jsonl", 7, "not valid UTF-8"),
    ("queries.jsonl", 2, '{"text": "no id"}', "queries.jsonl", 2, "field '_id': missing"),
    ("queries.jsonl", 3, '{"_id": "q2", "text": ""}', "queries.jsonl", 3, "empty text"),
    ("qrels/train.tsv", 2, "q0\tnope\t1", "train.tsv", 2, "unknown corpus id 'nope'"),
    ("qrels/train.tsv", 3, "ghost\td1\t1", "train.tsv", 3, "unknown query id 'ghost'"),
    ("qrels/train.tsv", 4, "q2\td2", "train.tsv", 4, "expected 3 or 4 tab-separated columns"),
    ("qrels/train.tsv", 5, "q3\td3\thigh", "train.tsv", 5, "field 'score': not a number"),
    ("qrels/train.tsv", 6, "q4\td4\t1.5", "train.tsv", 6, "field 'score': not an integer grade"),
    ("qrels/train.tsv", 2, b"q0\td0\t2\xff", "train.tsv", 2, "not valid UTF-8"),
    ("queries.jsonl", 4, '["q3", "a list"]', "queries.jsonl", 4, "expected a JSON object"),
    ("queries.jsonl", 5, '{"_id": "q1", "text": "twice"}', "queries.jsonl", 5, "duplicate query id 'q1'"),
    ("corpus.jsonl", 8, '{"_id": "d7", "title": "t", "text": ["x"]}', "corpus.jsonl", 8, "expected a string"),
]


@pytest.mark.parametrize("name,line,new,file_part,want_line,problem", CASES, ids=[c[-1][:24] for c in CASES])
def test_bad_beir_input(tmp_path, name, line, new, file_part, want_line, problem, capsys):
    root = write_tiny_beir(tmp_path / "bad")
    _corrupt(root, name, line, new)
    with pytest.raises(DataError) as e:
        load_dataset(root)
    msg = str(e.value)
    assert file_part in msg and f":{want_line}:" in msg and problem in msg, msg
    assert main(["data", "check", str(root)]) == 2
    err = capsys.readouterr().err
    assert problem in err and f":{want_line}:" in err


def _tsv_case(tmp_path, name, body):
    """A valid MS MARCO folder, then one file replaced by ``body``."""
    files = {"collection.tsv": "pid\ttext\n0\tfirst passage\n1\tsecond passage\n",
             "queries.train.tsv": "10\twhat is first\n11\twhat is second\n",
             "qrels.train.tsv": "10\t0\t0\t1\n11\t0\t1\t1\n"}
    files[name] = body
    for n, b in files.items():
        (tmp_path / n).write_bytes(b if isinstance(b, bytes) else b.encode())
    return tmp_path


MSMARCO_CASES = [
    ("collection.tsv", "0\tfine\n0\tduplicate\n", 2, "duplicate passage id '0'"),
    ("collection.tsv", "0\tfine\n1\ttoo\tmany\tcolumns\n", 2, "expected 2 or 3 tab-separated columns, found 4"),
    ("collection.tsv", "0\tfine\n1\t \n", 2, "field 'text': empty text"),
    ("collection.tsv", b"0\tfine\n1\tcaf\xe9\n", 2, "not valid UTF-8"),
    ("queries.train.tsv", "10\twhat is first\n11\n", 2, "expected 2 tab-separated columns, found 1"),
    ("queries.train.tsv", "10\twhat is first\n10\tagain\n", 2, "duplicate query id '10'"),
    ("qrels.train.tsv", "10\t0\t0\t1\n11\t0\t7\t1\n", 2, "field 'pid': unknown passage id '7'"),
    ("qrels.train.tsv", "10\t0\t0\t1\n99\t0\t1\t1\n", 2, "field 'qid': unknown query id '99'"),
    ("qrels.train.tsv", "10\t0\t0\thigh\n", 1, "field 'score': not a number"),  # not taken for a header
    ("qrels.train.tsv", "10\t0\t0\t1\n11\t0\t1\t0.5\n", 2, "not an integer grade"),
]


@pytest.mark.parametrize("name,body,line,problem", MSMARCO_CASES, ids=[c[-1][:24] for c in MSMARCO_CASES])
def test_bad_msmarco_input(tmp_path, name, body, line, problem):
    root = _tsv_case(tmp_path, name, body)
    with pytest.raises(DataError) as e:
        load_dataset(root)
    assert e.value.path.endswith(name) and e.value.line == line
    assert f"{name}:{line}:" in str(e.value) and problem in str(e.value), str(e.value)


PAIRS_CASES = [
    (b'{"query": "a", "positive": "b"}\n{"query": "c"}\n', 2, "field 'positive': missing"),
    (b'{"query": "a", "positive": ["b", 3]}\n', 1, "field 'positive[1]': expected a string, got int"),
    (b'{"query": "a", "positive": "b"}\n{"query": "a", "positive": \n', 2, "malformed JSON"),
    (b'{"query": "a", "positive": "b", "neg": ["  "]}\n', 1, "field 'neg[0]': empty text"),
    (b'{"query": "", "positive": "b"}\n', 1, "field 'query': empty text"),
    (b'{"query": "a", "positive": []}\n', 1, "field 'positive': empty list"),
    (b'\n\n{"query": "caf\xe9", "positive": "b"}\n', 3, "not valid UTF-8"),
]


@pytest.mark.parametrize("body,line,problem", PAIRS_CASES, ids=[c[-1][:24] for c in PAIRS_CASES])
def test_bad_pairs_input(tmp_path, body, line, problem):
    f = tmp_path / "p.jsonl"
    f.write_bytes(body)
    with pytest.raises(DataError) as e:
        load_dataset(f)
    assert f"p.jsonl:{line}:" in str(e.value) and problem in str(e.value), str(e.value)


def test_beir_missing_queries_file(tmp_path):
    root = write_tiny_beir(tmp_path / "b")
    (root / "queries.jsonl").unlink()
    with pytest.raises(DataError, match=r"queries\.jsonl: file not found"):
        load_dataset(root)


def test_missing_path_exit_2(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "nowhere")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
