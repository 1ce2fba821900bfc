"""Issue #26: every bad input or option is one line on stderr ("negminer: error: ..."), exit 2 (1 when a write
fails), never a traceback: corrupt compressed files, lone surrogates, wrong JSON types, mined files, mine options."""

import gzip
import json
import os
import re

import pytest

from negminer.cli import main
from negminer.data import load_dataset
from tinydata import write_tiny_beir

SURROGATE = "bad \ud800 text"  # json.dumps writes it as the escape \ud800, which json.loads accepts


def _write(root, name, data):
    p = root / name
    p.parent.mkdir(parents=True, exist_ok=True)
    data = data.encode("utf-8") if isinstance(data, str) else data
    p.write_bytes(gzip.compress(data, mtime=0) if name.endswith(".gz") else data)
    return p


def _jsonl(*recs):
    return "".join(json.dumps(r) + "\n" for r in recs)


def _edit(root, name, line, rec):
    """Line ``line`` of ``name`` replaced by the JSON of ``rec`` (or the text ``rec``)."""
    p = root / name
    rows = p.read_text().split("\n")
    rows[line - 1] = rec if isinstance(rec, str) else json.dumps(rec)
    p.write_text("\n".join(rows))
    return root


def _beir(tmp_path, name=None, line=None, rec=None):
    """The tiny BEIR set, with line ``line`` of ``name`` replaced by ``rec``."""
    root = write_tiny_beir(tmp_path / "beir")
    return _edit(root, name, line, rec) if name else root


def _gz(root, name, how):
    """Gzip ``name`` to ``name.gz``, then truncate it (``cut``) or replace it by garbage (``junk``)."""
    src = root / name
    blob = gzip.compress(src.read_bytes(), mtime=0)
    src.unlink()
    blob = {"cut": blob[: len(blob) // 2], "hdr": b"\x1f\x8b\x08\x00" + b"garbage" * 40,
            "junk": b"not gzip at all\n" * 20}[how]
    (root / f"{name}.gz").write_bytes(blob)
    return root


def _xmc_json(tmp_path, lbl=None, trn=None):
    root = tmp_path / "LF-Tiny"
    _write(root, "lbl.json.gz", lbl if lbl is not None else _jsonl({"uid": "L0", "title": "red shoe"},
                                                                   {"uid": "L1", "title": "blue hat"}))
    _write(root, "trn.json.gz", trn if trn is not None else _jsonl({"uid": "A", "title": "shoes", "target_ind": [0]},
                                                                   {"uid": "B", "title": "hats", "target_ind": [1]}))
    return root


def _xmc_npz(tmp_path, values=(1.0, 1.0, 1.0), cut=False):
    sp = pytest.importorskip("scipy.sparse")
    root = tmp_path / "npz"
    _write(root, "raw/trn_X.txt", "running shoes\nhats\n")
    _write(root, "raw/Y.txt", "red shoe\nblue hat\ncap\n")
    p = root / "Y.trn.npz"
    sp.save_npz(p, sp.csr_matrix((list(values), ([0, 1, 1], [0, 1, 2])), shape=(2, 3)))
    if cut:
        p.write_bytes(p.read_bytes()[:-40])
    return root


def _xmc_txt(tmp_path, body, gz=False):
    root = tmp_path / "txt"
    _write(root, "raw/trn_X.txt", "running shoes\nhats\n")
    _write(root, "raw/Y.txt", "red shoe\nblue hat\ncap\n")
    if gz:
        blob = gzip.compress(body.encode(), mtime=0)
        (root / "trn_X_Y.txt.gz").write_bytes(blob[: len(blob) - 12])
    else:
        _write(root, "trn_X_Y.txt", body)
    return root


def _pairs(tmp_path, body, gz=False):
    if gz:
        blob = gzip.compress(body.encode(), mtime=0)
        p = tmp_path / "train.jsonl.gz"
        p.write_bytes(blob[: len(blob) // 2])
        return p
    return _write(tmp_path, "p.jsonl", body)


def _qrels_gz(tmp_path):
    root = _beir(tmp_path)
    rows = "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(120))
    (root / "qrels" / "train.tsv").unlink()
    blob = gzip.compress(rows.encode(), mtime=0)
    (root / "qrels" / "train.tsv.gz").write_bytes(blob[: len(blob) * 2 // 3])
    return root


def _xmc_trn_garbage(t):
    root = _xmc_json(t)
    (root / "trn.json.gz").write_bytes(b"this is no gzip file\n" * 10)
    return root


def _xmc_lbl_cut(t):
    root = _xmc_json(t, lbl=_jsonl(*[{"uid": f"L{i}", "title": f"label number {i}"} for i in range(3000)]))
    p = root / "lbl.json.gz"
    p.write_bytes(p.read_bytes()[:-100])
    return root


GZ = r"compressed file is truncated or corrupt \("
# (id, make the data folder or file, regex its one-line message must match)
DATA_CASES = [
    ("corpus gz truncated", lambda t: _gz(_beir(t), "corpus.jsonl", "cut"),
     r"corpus\.jsonl\.gz:\d+: " + GZ + "EOFError"),
    ("corpus gz garbage", lambda t: _gz(_beir(t), "corpus.jsonl", "junk"),
     r"corpus\.jsonl\.gz:1: " + GZ + "BadGzipFile"),
    ("corpus gz bad deflate", lambda t: _gz(_beir(t), "corpus.jsonl", "hdr"),
     r"corpus\.jsonl\.gz:1: " + GZ + r"zlib\.error: Error -3"),
    ("queries gz truncated", lambda t: _gz(_beir(t), "queries.jsonl", "cut"), r"queries\.jsonl\.gz:\d+: " + GZ),
    ("qrels gz truncated", _qrels_gz, r"train\.tsv\.gz:\d+: " + GZ),
    ("pairs gz truncated", lambda t: _pairs(t, _jsonl(*[{"query": f"q{i}", "positive": f"p{i}"} for i in range(300)]),
                                            gz=True), r"train\.jsonl\.gz:\d+: " + GZ),
    ("xmc lbl gz truncated", _xmc_lbl_cut, r"lbl\.json\.gz:\d+: " + GZ + "EOFError"),
    ("xmc trn gz garbage", _xmc_trn_garbage, r"trn\.json\.gz:1: " + GZ + "BadGzipFile"),
    ("xmc trn_X_Y gz truncated", lambda t: _xmc_txt(t, "2 3\n0:1\n1:1 2:1\n", gz=True), r"trn_X_Y\.txt\.gz:\d+: " + GZ),
    ("xmc npz truncated", lambda t: _xmc_npz(t, cut=True), r"Y\.trn\.npz: " + GZ + "BadZipFile"),
    ("xmc npz garbage", lambda t: (_xmc_npz(t) / "Y.trn.npz").write_bytes(b"no zip") and t / "npz",
     r"Y\.trn\.npz: not a scipy sparse matrix \(ValueError: an \.npz file is a zip archive"),
    ("xmc npz negative", lambda t: _xmc_npz(t, (1.0, 1.0, -2.0)), r"Y\.trn\.npz: value -2\.0 at row 1, column 2"),
    ("xmc npz nan", lambda t: _xmc_npz(t, (float("nan"), 1.0, 1.0)), r"Y\.trn\.npz: value nan at row 0, column 0"),
    ("xmc trn_X_Y negative", lambda t: _xmc_txt(t, "2 3\n0:1\n1:1 2:-1\n"),
     r"trn_X_Y\.txt:3: field 'label': negative value in '2:-1'"),
    ("xmc target_rel negative",
     lambda t: _xmc_json(t, trn=_jsonl({"title": "a", "target_ind": [0], "target_rel": [-1]})),
     r"trn\.json\.gz:1: field 'target_rel': negative value -1"),
    ("surrogate corpus text", lambda t: _beir(t, "corpus.jsonl", 3, {"_id": "d2", "text": SURROGATE}),
     r"corpus\.jsonl:3: field 'text': lone UTF-16 surrogate \\ud800 in the text \(invalid Unicode\)"),
    ("surrogate corpus title", lambda t: _beir(t, "corpus.jsonl", 4, {"_id": "d3", "title": SURROGATE, "text": "x"}),
     r"corpus\.jsonl:4: field 'title': lone UTF-16 surrogate \\ud800"),
    ("surrogate corpus id", lambda t: _beir(t, "corpus.jsonl", 4, {"_id": "d\udfff", "text": "x"}),
     r"corpus\.jsonl:4: field '_id': lone UTF-16 surrogate \\udfff"),
    ("surrogate query text", lambda t: _beir(t, "queries.jsonl", 2, {"_id": "q1", "text": SURROGATE}),
     r"queries\.jsonl:2: field 'text': lone UTF-16 surrogate"),
    ("surrogate pairs positive", lambda t: _pairs(t, _jsonl({"query": "a", "positive": ["b", SURROGATE]})),
     r"p\.jsonl:1: field 'positive\[1\]': lone UTF-16 surrogate"),
    ("surrogate xmc title", lambda t: _xmc_json(t, lbl=_jsonl({"uid": "L0", "title": SURROGATE})),
     r"lbl\.json\.gz:1: field 'title': lone UTF-16 surrogate"),
    ("text int", lambda t: _beir(t, "corpus.jsonl", 2, {"_id": "d1", "text": 12345}),
     r"corpus\.jsonl:2: field 'text': expected a string, got int$"),
    ("title list", lambda t: _beir(t, "corpus.jsonl", 2, {"_id": "d1", "title": [1], "text": "x"}),
     r"corpus\.jsonl:2: field 'title': expected a string, got list$"),
    ("query text float", lambda t: _beir(t, "queries.jsonl", 2, {"_id": "q1", "text": 1.5}),
     r"queries\.jsonl:2: field 'text': expected a string, got float$"),
    ("id NaN", lambda t: _beir(t, "corpus.jsonl", 2, '{"_id": NaN, "text": "x"}'),
     r"corpus\.jsonl:2: field '_id': expected a string or an integer id, got float$"),
    ("id 1.5", lambda t: _beir(t, "queries.jsonl", 2, {"_id": 1.5, "text": "x"}),
     r"queries\.jsonl:2: field '_id': expected a string or an integer id, got float$"),
    ("id true", lambda t: _beir(t, "corpus.jsonl", 2, {"_id": True, "text": "x"}), r"field '_id': .* got bool$"),
    ("id dict", lambda t: _beir(t, "corpus.jsonl", 2, {"_id": {"a": 1}, "text": "x"}), r"field '_id': .* got dict$"),
    ("xmc uid list", lambda t: _xmc_json(t, lbl=_jsonl({"uid": ["L0"], "title": "x"})),
     r"lbl\.json\.gz:1: field 'uid': expected a string or an integer id, got list$"),
    ("id 5000 digits", lambda t: _beir(t, "corpus.jsonl", 2, '{"_id": ' + "1" * 5000 + ', "text": "x"}'),
     r"corpus\.jsonl:2: malformed JSON \(an integer of more than 4300 digits\)$"),
    ("json nested too deeply", lambda t: _beir(t, "queries.jsonl", 3, '{"_id": "q2", "text": ' + "[" * 100000),
     r"queries\.jsonl:3: malformed JSON \(nested too deeply\)$"),
    ("pairs neg dict", lambda t: _pairs(t, _jsonl({"query": "a", "positive": "b", "neg": ["x", {"a": 1}]})),
     r"p\.jsonl:1: field 'neg\[1\]': expected a string, got dict$"),
    ("pairs positive int", lambda t: _pairs(t, _jsonl({"query": "a", "positive": 3})),
     r"p\.jsonl:1: field 'positive': expected a string or a list of strings, got int$"),
]


def one_line_error(capsys, rc, want_rc=2):
    """The stderr of a failed command: exactly one line, no traceback."""
    err = capsys.readouterr().err
    assert rc == want_rc, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("negminer: error: "), err
    return err.rstrip("\n")


@pytest.mark.parametrize("make,pattern", [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_bad_data_is_one_line(tmp_path, capsys, make, pattern):
    path = make(tmp_path)
    err = one_line_error(capsys, main(["data", "check", str(path)]))
    assert re.search(pattern, err), err


def test_integer_ids_are_their_decimal_string(tmp_path):
    """Ids may be JSON integers (BEIR sets with numeric ids): 123 is the id "123" of the qrels."""
    root = _beir(tmp_path, "corpus.jsonl", 2, {"_id": 123, "text": "numeric id"})
    _edit(root, "queries.jsonl", 2, {"_id": 77, "text": "what has a numeric id"})
    qrels = root / "qrels" / "train.tsv"
    qrels.write_text(qrels.read_text().replace("q1\td1\t1", "77\t123\t1"))
    ds = load_dataset(root)
    assert "123" in ds.target_ids and "77" in ds.query_ids
    assert ds.qrels["train"]["77"] == {"123": 1}


# --- mined negatives files (train --negatives mined --mined-file F)

def _train(tiny, mined, out):
    return ["train", "--data", str(tiny), "--negatives", "mined", "--mined-file", str(mined), "--encoder", "static",
            "--steps", "1", "--quiet", "--no-zero-shot", "--num-negatives", "2", "--batch-size", "8", "--out", str(out)]


MINED_CASES = [
    ({"query_id": "q0", "neg_ids": ["d1", "d2", {"id": "d3"}]}, r"m\.jsonl:1: field 'neg_ids\[2\]': expected a string "
                                                                 r"or an integer id, got dict$"),
    ({"query_id": "q0", "neg_ids": ["d1", ["d2"]]},
     r"field 'neg_ids\[1\]': expected a string or an integer id, got list$"),
    ({"query_id": "q0", "neg_ids": ["d1", 2.0]}, r"field 'neg_ids\[1\]': .* got float$"),
    ({"query_id": "q0", "neg": ["x", "y", {"t": 1}]}, r"m\.jsonl:1: field 'neg\[2\]': expected a string, got dict$"),
    ({"query_id": "q0", "neg": [["a list"]]}, r"field 'neg\[0\]': expected a string, got list$"),
    ({"query_id": "q0", "neg": [SURROGATE]}, r"m\.jsonl:1: field 'neg\[0\]': lone UTF-16 surrogate \\ud800"),
    ({"query_id": 0.5, "neg_ids": ["d1"]}, r"field 'query_id': expected a string or an integer id, got float$"),
    ({"query_id": "q0", "neg_ids": "d1"}, r"field 'neg_ids': expected a list, got str$"),
    ({"anchor": "the nowhere thing", "negative_1": "x"}, r"field 'anchor': query text not among"),
    ({"query_id": "q0", "neg_ids": ["nope"]}, r"field 'neg_ids\[0\]': 'nope' is not a target of the dataset$"),
]


@pytest.mark.parametrize("rec,pattern", MINED_CASES, ids=[p[7:40] for _, p in MINED_CASES])
def test_bad_mined_file_is_one_line(tiny_beir, tmp_path, capsys, rec, pattern):
    mined = _write(tmp_path, "m.jsonl", _jsonl(rec))
    err = one_line_error(capsys, main(_train(tiny_beir, mined, tmp_path / "run")))
    assert re.search(pattern, err), err


def test_mined_file_truncated_gz(tiny_beir, tmp_path, capsys):
    blob = gzip.compress(_jsonl(*[{"query_id": f"q{i}", "neg_ids": ["d1", "d2"]} for i in range(500)]).encode())
    (tmp_path / "m.jsonl.gz").write_bytes(blob[: len(blob) // 2])
    err = one_line_error(capsys, main(_train(tiny_beir, tmp_path / "m.jsonl.gz", tmp_path / "run")))
    assert re.search(r"m\.jsonl\.gz:\d+: " + GZ, err), err


@pytest.mark.parametrize("fmt", ["flag", "st"])
def test_mined_file_accepts_both_mine_formats(tiny_beir, tmp_path, fmt):
    from negminer.data.mined import read_mined_file

    mined = tmp_path / f"{fmt}.jsonl"
    assert main(["mine", "--model", "static", "--data", str(tiny_beir), "--out", str(mined), "--top-k", "3",
                 "--format", fmt, "--quiet"]) == 0
    ds = load_dataset(tiny_beir)
    got = read_mined_file(str(mined), ds, {t: i for i, t in enumerate(ds.target_ids)})
    assert len(got) == 120 and all(len(v) == 3 for v in got.values())
    assert main(_train(tiny_beir, mined, tmp_path / "run")) == 0


# --- negminer mine: options and --out checked before any work; a failed write is one line, exit 1

def _mine(tiny, out, *extra):
    return ["mine", "--model", "static", "--data", str(tiny), "--out", str(out), "--quiet", *extra]


def _blocker(tmp_path):
    (tmp_path / "file").write_text("x")
    return tmp_path / "file" / "neg.jsonl"


MINE_CASES = [
    ("top-k -3", lambda t: t / "n.jsonl", ["--top-k", "-3"], r"--top-k must be >= 1, got -3$"),
    ("top-k 0", lambda t: t / "n.jsonl", ["--top-k", "0"], r"--top-k must be >= 1, got 0$"),
    ("skip -2", lambda t: t / "n.jsonl", ["--skip", "-2"], r"--skip must be >= 0, got -2$"),
    ("margin nan", lambda t: t / "n.jsonl", ["--margin", "nan"], r"--margin must be a finite number, got nan$"),
    ("margin inf", lambda t: t / "n.jsonl", ["--margin=-inf"], r"--margin must be a finite number, got -inf$"),
    ("out is a folder", lambda t: t, [], r"--out .*: is a folder"),
    ("out parent is a file", _blocker, [], r"--out .*neg\.jsonl: .*file is a file, not a folder$"),
    ("out grandparent is a file", lambda t: _blocker(t).parent / "sub" / "neg.jsonl", [],
     r"file is a file, not a folder$"),
]


@pytest.mark.parametrize("make,extra,pattern", [c[1:] for c in MINE_CASES], ids=[c[0] for c in MINE_CASES])
def test_bad_mine_options_are_one_line(tiny_beir, tmp_path, capsys, monkeypatch, make, extra, pattern):
    import negminer.encoders

    def no_encoding(*a, **k):
        raise AssertionError("checked after the work started")

    monkeypatch.setattr(negminer.encoders, "build_encoder", no_encoding)
    out = make(tmp_path)
    err = one_line_error(capsys, main(_mine(tiny_beir, out, *extra)))
    assert re.search(pattern, err), err
    assert not (tmp_path / "n.jsonl").exists()


def test_mine_out_not_writable(tiny_beir, tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes to read-only folders")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        err = one_line_error(capsys, main(_mine(tiny_beir, ro / "neg.jsonl")))
    finally:
        ro.chmod(0o755)
    assert re.search(r"--out .*neg\.jsonl: folder .*ro is not writable$", err), err


def test_mine_disk_full_is_one_line_exit_1(tiny_beir, tmp_path, capsys, monkeypatch):
    import negminer.mine

    def full(path, text):
        raise OSError(28, "No space left on device")

    out = tmp_path / "neg.jsonl"
    out.write_text("previous\n")
    monkeypatch.setattr(negminer.mine, "atomic_write_text", full)
    err = one_line_error(capsys, main(_mine(tiny_beir, out)), want_rc=1)
    assert re.search(r"neg\.jsonl: writing failed \(No space left on device\)", err), err
    assert out.read_text() == "previous\n"


def test_mine_makes_a_missing_folder_and_says_so(tiny_beir, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "neg.jsonl"
    assert main(["mine", "--model", "static", "--data", str(tiny_beir), "--out", str(out), "--top-k", "2"]) == 0
    assert out.is_file() and "does not exist; it will be created" in capsys.readouterr().err


def test_pairs_with_sentence_transformers_columns_after_the_first_line(tmp_path, capsys):
    """The first line decides the reader (plain pairs here); numbered negatives later are read, labels refused."""
    from negminer.data.load import load_dataset

    f = tmp_path / "train.jsonl"
    rows = [{"anchor": "a", "positive": "p"}, {"anchor": "b", "positive": "q", "negative_2": "n2", "negative_1": "n1",
                                                 "negative_3": None}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_dataset(f)
    qid = next(q for q, t in zip(ds.query_ids, ds.query_texts) if t == "b")
    assert [ds.target_texts[ds.target_index[t]] for t in ds.hard_negatives[qid]] == ["n1", "n2"]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows[:1] + [{"anchor": "b", "positive": "q", "label": 0}]))
    from negminer.cli import main

    assert main(["data", "check", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.jsonl:2: field 'label'" in err[0]
