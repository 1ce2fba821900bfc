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


def test_bad_pairs_input(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"query": "a", "positive": "b"}) + "\n" + json.dumps({"query": "c"}) + "\n")
    with pytest.raises(DataError, match=r"p\.jsonl:2: field 'positive': missing"):
        load_dataset(f)
    f.write_text(json.dumps({"query": "a", "positive": ["b", 3]}) + "\n")
    with pytest.raises(DataError, match=r"p\.jsonl:1: field 'positive'"):
        load_dataset(f)


def test_bad_msmarco_input(tmp_path):
    (tmp_path / "collection.tsv").write_text("0\tfine\n0\tduplicate\n")
    (tmp_path / "queries.train.tsv").write_text("1\tq\n")
    with pytest.raises(DataError, match=r"collection\.tsv:2: duplicate passage id '0'"):
        load_dataset(tmp_path)


def test_missing_path_exit_2(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "nowhere")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
