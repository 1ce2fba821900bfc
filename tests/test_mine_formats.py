"""negminer mine writes sentence-transformers' mine_hard_negatives formats (#27), JSONL or parquet, and
--mined-file reads every one back to the same negatives per query; its false-negative filters (--margin,
--relative-margin, --max-score) drop exactly the candidates a brute-force computation drops."""

from __future__ import annotations

import json

import pytest
import torch
from tinydata import write_tiny_multilabel

from negminer.cli import main
from negminer.data import load_dataset
from negminer.data.mined import read_mined_file
from negminer.encoders import build_encoder
from negminer.mine import FORMATS, mine

# the columns of each format, in order (sentence-transformers' output_format, anchor / positive columns
# named anchor and positive)
COLUMNS = {
    "flag": ["query", "pos", "neg", "query_id", "pos_ids", "neg_ids", "neg_scores"],
    "triplet": ["anchor", "positive", "negative"],
    "n-tuple": ["anchor", "positive", "negative_1", "negative_2", "negative_3"],
    "n-tuple-scores": ["anchor", "positive", "negative_1", "negative_2", "negative_3", "scores"],
    "labeled-pair": ["anchor", "positive", "label"],
    "labeled-list": ["anchor", "positive", "labels"],
}
FILTER_ARGS = ["--relative-margin", "0.05", "--max-score", "0.6"]


def _mine(data, out, fmt, *extra, top_k=3):
    return main(["mine", "--model", "static", "--data", str(data), "--out", str(out), "--top-k", str(top_k),
                 "--format", fmt, "--quiet", *extra])


def _rows(path):
    if str(path).endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    return [json.loads(x) for x in path.read_text().splitlines()]


def _expected(data, fmt, top_k=3, **filters):
    """What mine found, per query with negatives (n-tuple: with all K), as rows of the dataset."""
    ds = load_dataset(data)
    out = {}
    for qid, _, negs in mine(build_encoder("static"), ds, "train", top_k, **filters):
        if negs and (len(negs) == top_k or not fmt.startswith("n-tuple")):
            out[qid] = [r for r, _ in negs]
    return ds, out


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
@pytest.mark.parametrize("fmt", list(FORMATS) + ["st"])
def test_every_format_round_trips(tiny_beir, tmp_path, fmt, ext):
    out = tmp_path / f"neg.{ext}"
    assert _mine(tiny_beir, out, fmt, *FILTER_ARGS) == 0
    rows = _rows(out)
    canonical = "n-tuple" if fmt == "st" else fmt
    assert all(list(r) == COLUMNS[canonical] for r in rows)
    meta = json.loads((tmp_path / f"neg.{ext}.meta.json").read_text())
    assert meta["format"] == canonical and meta["file"] == ext and meta["rows"] == len(rows)
    assert meta["relative_margin"] == 0.05 and meta["max_score"] == 0.6
    ds, want = _expected(tiny_beir, canonical, relative_margin=0.05, max_score=0.6)
    assert len(want) > 100  # the filters leave most queries their 3 negatives
    got = read_mined_file(str(out), ds, {t: i for i, t in enumerate(ds.target_ids)})
    assert got == want


@pytest.mark.parametrize("fmt", FORMATS)
def test_several_positives_per_query_round_trip(tmp_path, fmt):
    data = write_tiny_multilabel(tmp_path / "ml")
    out = tmp_path / "neg.jsonl"
    assert _mine(data, out, fmt, "--max-score", "0.7") == 0
    ds, want = _expected(data, fmt, max_score=0.7)
    pos = ds.positives("train")
    assert sum(len(pos[q]) > 1 for q in want) > 10
    rows = _rows(out)
    n_rows = {"triplet": sum(len(pos[q]) * len(want[q]) for q in want),       # per (query, positive, negative)
              "n-tuple": sum(len(pos[q]) for q in want),                      # per (query, positive)
              "labeled-pair": sum(map(len, pos.values())) + sum(map(len, want.values())),  # per document
              "flag": len(pos)}                                               # per query
    n_rows["n-tuple-scores"] = n_rows["labeled-list"] = n_rows["n-tuple"]
    assert len(rows) == n_rows[fmt]
    assert read_mined_file(str(out), ds, {t: i for i, t in enumerate(ds.target_ids)}) == want


def test_mined_file_trains_from_every_format(tiny_beir, tmp_path):
    for fmt in ("triplet", "labeled-pair", "labeled-list"):
        out = tmp_path / f"{fmt}.parquet"
        assert _mine(tiny_beir, out, fmt) == 0
        assert main(["train", "--data", str(tiny_beir), "--negatives", "mined", "--mined-file", str(out), "--encoder",
                     "static", "--steps", "1", "--quiet", "--no-zero-shot", "--num-negatives", "2", "--batch-size", "8",
                     "--out", str(tmp_path / f"run-{fmt}")]) == 0


# ---- the same rows as sentence-transformers' mine_hard_negatives ------------------------------------

@pytest.fixture
def st_case(tiny_beir, tmp_path):
    datasets = pytest.importorskip("datasets")
    from sentence_transformers import SentenceTransformer

    ds = load_dataset(tiny_beir)
    build_encoder("static").save(tmp_path / "m")
    st = SentenceTransformer(str(tmp_path / "m"), device="cpu")
    pos = ds.positives("train")
    texts = ds.target_inputs()
    qs = [q for q in ds.query_ids if q in pos]
    pairs = datasets.Dataset.from_dict({
        "anchor": [ds.query_texts[ds.query_index[q]] for q in qs for _ in pos[q]],
        "positive": [texts[r] for q in qs for r in sorted(pos[q])]})
    return ds, st, pairs, texts, tmp_path / "m"


@pytest.mark.parametrize("fmt", ["triplet", "n-tuple", "n-tuple-scores", "labeled-pair", "labeled-list"])
def test_formats_are_sentence_transformers_rows(st_case, tiny_beir, tmp_path, fmt):
    """mine_hard_negatives(output_format=fmt, relative_margin, max_score) on the same model: the same rows, in
    the same order (its range_max set to the corpus: it keeps only a window of candidates otherwise, and with
    a relative margin of 0.05 more than 100 of the 160 targets score above some queries' thresholds)."""
    from sentence_transformers.util import mine_hard_negatives

    ds, st, pairs, texts, model = st_case
    out = tmp_path / f"{fmt}.jsonl"
    assert main(["mine", "--model", str(model), "--data", str(tiny_beir), "--out", str(out), "--top-k", "3",
                 "--format", fmt, "--quiet", *FILTER_ARGS]) == 0
    ours = _rows(out)
    theirs = mine_hard_negatives(pairs, st, corpus=texts, num_negatives=3, relative_margin=0.05, max_score=0.6,
                                 range_max=len(texts), output_format=fmt, verbose=False).to_list()
    assert len(ours) == len(theirs) > 100
    for o, t in zip(ours, theirs):
        assert list(o) == list(t)
        assert {k: v for k, v in o.items() if k != "scores"} == {k: v for k, v in t.items() if k != "scores"}
        if "scores" in o:
            torch.testing.assert_close(torch.tensor(o["scores"]), torch.tensor(t["scores"]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("fmt", ["triplet", "n-tuple", "labeled-pair", "labeled-list"])
def test_sentence_transformers_files_are_read_back(st_case, tmp_path, fmt):
    """What mine_hard_negatives writes (output_scores=True too: labeled formats then carry scores, not labels),
    saved as JSONL or parquet, reads to the negatives it chose."""
    from sentence_transformers.util import mine_hard_negatives

    ds, st, pairs, texts, _ = st_case
    row = {t: i for i, t in enumerate(ds.target_ids)}
    by_text = {t: i for i, t in enumerate(texts)}
    qid_of = {t: q for q, t in zip(ds.query_ids, ds.query_texts)}
    for scores in (False, True):
        out = mine_hard_negatives(pairs, st, corpus=texts, num_negatives=3, relative_margin=0.05,
                                  range_max=len(texts), output_format=fmt, output_scores=scores, verbose=False)
        want = {}
        for r in mine_hard_negatives(pairs, st, corpus=texts, num_negatives=3, relative_margin=0.05,
                                     range_max=len(texts), output_format="labeled-pair", verbose=False).to_list():
            if r["label"] == 0:
                want.setdefault(qid_of[r["anchor"]], []).append(by_text[r["positive"]])
        if fmt == "n-tuple":
            want = {q: v for q, v in want.items() if len(v) == 3}
        for path in (tmp_path / f"st-{fmt}-{scores}.jsonl", tmp_path / f"st-{fmt}-{scores}.parquet"):
            out.to_json(str(path)) if path.suffix == ".jsonl" else out.to_parquet(str(path))
            assert read_mined_file(str(path), ds, row) == want, (path.name, scores)


# ---- the filters drop exactly the right candidates ------------------------------------------------------

@pytest.mark.parametrize("opts", [
    {"relative_margin": 0.05}, {"max_score": 0.55}, {"margin": 0.01, "relative_margin": 0.08, "max_score": 0.58},
    {"relative_margin": 0.0}], ids=["relative", "max_score", "all_three", "relative_0"])
def test_mine_filters_drop_exactly_the_candidates_above_the_thresholds(tiny_beir, tmp_path, opts):
    """Against brute force: every target scored, the positive and the candidates above positive - margin,
    positive - |positive| x R or max_score dropped, the best 40 of the rest kept (no window truncation)."""
    out = tmp_path / "neg.jsonl"
    args = [x for k, v in opts.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    assert _mine(tiny_beir, out, "flag", *args, top_k=40) == 0
    ds = load_dataset(tiny_beir)
    m = build_encoder("static")
    pos = ds.positives("train")
    qids = [q for q in ds.query_ids if q in pos]
    S = m.encode_queries([ds.query_texts[ds.query_index[q]] for q in qids], batch_size=128) @ \
        m.encode_targets(ds.target_inputs(), batch_size=128).T
    rows = {r["query_id"]: r for r in _rows(out)}
    dropped_above_positive = 0
    for n, q in enumerate(qids):
        s, p = S[n], sorted(pos[q])
        s_pos = s[p].max()  # float32, as mine computes it
        thr = []
        if "margin" in opts:
            thr.append(s_pos - opts["margin"])
        if "relative_margin" in opts:
            thr.append(s_pos - s_pos.abs() * opts["relative_margin"])
        if "max_score" in opts:
            thr.append(torch.tensor(opts["max_score"]))
        drop = torch.zeros(len(s), dtype=torch.bool)
        for t in thr:  # each rule on its own, then any
            drop |= s > t
        dropped_above_positive += int((s > s_pos).sum())
        ok = ~drop
        ok[p] = False
        order = sorted(ok.nonzero().flatten().tolist(), key=lambda j: -float(s[j]))[:40]
        got = [ds.target_ids.index(t) for t in rows[q]["neg_ids"]]
        assert [float(s[j]) for j in got] == [float(s[j]) for j in order], q  # the same ranks (equal scores: ties)
        last = float(s[order[-1]])  # targets tied with the last kept one may change places with those left out
        assert {j for j in got if float(s[j]) != last} == {j for j in order if float(s[j]) != last}, q
        assert set(rows[q]["neg_ids"]).isdisjoint(ds.target_ids[j] for j in drop.nonzero().flatten().tolist())
    assert dropped_above_positive > 100  # candidates score above the positive: the filters have work to do


@pytest.mark.parametrize("args,needle", [
    (["--relative-margin", "1.5"], "--relative-margin must be between 0 and 1, got 1.5"),
    (["--relative-margin", "nan"], "--relative-margin must be between 0 and 1, got nan"),
    (["--max-score", "inf"], "--max-score must be a finite number, got inf"),
    (["--format", "quadruplet"], "argument --format: invalid choice"),
])
def test_mine_refuses_bad_filter_options_in_one_line(tiny_beir, tmp_path, capsys, args, needle):
    out = tmp_path / "neg.jsonl"
    try:
        rc = main(["mine", "--model", "static", "--data", str(tiny_beir), "--out", str(out), "--quiet", *args])
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not out.exists()


@pytest.mark.parametrize("rec,pattern", [
    ({"anchor": "the azure sparrow in the woods", "positive": "x", "label": 2}, "a label is 0 .* got 2"),
    ({"anchor": "the azure sparrow in the woods", "positive": ["a", "b"], "labels": [1]},
     "expected a list of 2 labels"),
    ({"anchor": "the azure sparrow in the woods", "positive": "nope", "label": 0}, "'nope' is not a target"),
])
def test_bad_labeled_rows_are_one_line(tiny_beir, tmp_path, capsys, rec, pattern):
    import re

    bad = tmp_path / "m.jsonl"
    bad.write_text(json.dumps(rec) + "\n")
    assert main(["train", "--data", str(tiny_beir), "--negatives", "mined", "--mined-file", str(bad), "--encoder",
                 "static", "--steps", "1", "--quiet", "--no-zero-shot", "--num-negatives", "2", "--batch-size", "8",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(pattern, err) and "m.jsonl:1" in err, err
