"""Issue #27: Hugging Face ``datasets`` data (save_to_disk, parquet, CSV, the Hub's layout, hf:NAME from the
local cache) and sentence-transformers' columns (anchor/query, positive or a list, negative_1..n, labels)."""

import json
import re
import shutil
import sys

import pytest

datasets = pytest.importorskip("datasets")

from negminer.cli import main  # noqa: E402
from negminer.data import load_dataset  # noqa: E402
from negminer.data.hfdata import is_hf  # noqa: E402
from negminer.data.mined import mined_lists  # noqa: E402
from negminer.data.pairs import load_pairs  # noqa: E402
from negminer.errors import DataError  # noqa: E402
from tinydata import COLOURS, PLACES, SYN, THINGS  # noqa: E402

ROWS = [  # an anchor on two rows; "a small feline" the positive of two anchors; a negative that is a positive
    {"anchor": "what is a cat", "positive": "a small feline", "negative": "a large dog"},
    {"anchor": "what is a cat", "positive": "a pet that purrs", "negative": "a car"},
    {"anchor": "what is a kitten", "positive": "a small feline", "negative": "a pet that purrs"},
    {"anchor": "what is rain", "positive": "water falling from clouds", "negative": "a car"},
]


@pytest.fixture(autouse=True)
def _private_hf_caches(tmp_path, monkeypatch):
    """Nothing of these tests reaches the user's Hugging Face caches, nor the network."""
    import socket

    import huggingface_hub.constants as hub

    def no_network(*args, **kwargs):
        raise AssertionError(f"a network connection was attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets-cache"))
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf-hub-cache"))
    was = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # the tests' own to_parquet / save_to_disk: stderr holds only negminer's
    yield
    if not was:
        datasets.enable_progress_bars()


def table(rows):
    return datasets.Dataset.from_list(rows)


def task(n, start=0, negatives=0):
    """Rows of a small lexical retrieval task (tinydata's words): a description -> the sentence about it."""
    combos = [(c, t, p) for c in COLOURS for t in THINGS for p in PLACES]
    out = []
    for i in range(start, start + n):
        c, t, p = combos[(i * 37) % len(combos)]
        row = {"anchor": f"the {SYN[c]} {SYN[t]} in the {SYN[p]}", "positive": f"A {c} {t} stands in the {p}."}
        for k in range(1, negatives + 1):
            c2, t2, p2 = combos[(i * 37 + 11 * k) % len(combos)]
            row[f"negative_{k}"] = f"A {c2} {t2} stands in the {p2}."
        out.append(row)
    return out


def splits(negatives=0):
    return datasets.DatasetDict({"train": table(task(24, 0, negatives)), "validation": table(task(8, 24, negatives)),
                                 "test": table(task(8, 32, negatives))})


def qid(ds, text):
    return next(q for q, t in zip(ds.query_ids, ds.query_texts) if t == text)


def tid(ds, text):
    return next(t for t, x in zip(ds.target_ids, ds.target_texts) if x == text)


def check_rows_dataset(ds, split="train"):
    """What ROWS must give, whichever format carried them."""
    assert ds.qrels.keys() == {split}
    assert sorted(ds.query_texts) == ["what is a cat", "what is a kitten", "what is rain"]
    assert sorted(ds.target_texts) == sorted({"a small feline", "a large dog", "a pet that purrs", "a car",
                                              "water falling from clouds"})  # de-duplicated by text
    cat, kitten = qid(ds, "what is a cat"), qid(ds, "what is a kitten")
    assert ds.qrels[split][cat] == {tid(ds, "a small feline"): 1, tid(ds, "a pet that purrs"): 1}
    assert ds.qrels[split][kitten] == {tid(ds, "a small feline"): 1}
    assert ds.hard_negatives[cat] == [tid(ds, "a large dog"), tid(ds, "a car")]
    assert ds.hard_negatives[kitten] == [tid(ds, "a pet that purrs")]


# ---- layouts ---------------------------------------------------------------------------------------------

def test_save_to_disk_dataset_is_split_train(tmp_path):
    table(ROWS).save_to_disk(str(tmp_path / "saved"))
    assert is_hf(tmp_path / "saved")
    ds = load_dataset(tmp_path / "saved")
    check_rows_dataset(ds)
    assert ds.name == "saved" and ds.source == str(tmp_path / "saved")


def test_save_to_disk_dataset_dict_keeps_its_splits(tmp_path):
    splits().save_to_disk(str(tmp_path / "dd"))
    ds = load_dataset(tmp_path / "dd")
    assert list(ds.qrels) == ["train", "validation", "test"]
    assert [len(ds.positives(s)) for s in ds.qrels] == [24, 8, 8]
    assert len(ds.query_ids) == 40 and ds.num_targets == 40 and not ds.hard_negatives


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json"])
def test_single_files(tmp_path, fmt):
    f = tmp_path / f"rows.{fmt}"
    getattr(table(ROWS), f"to_{fmt}")(str(f), **({"index": False} if fmt == "csv" else {}))
    ds = load_dataset(f)
    check_rows_dataset(ds)
    assert ds.name == "rows"


def test_ids_are_those_of_the_jsonl_pairs_reader(tmp_path):
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    table(ROWS).to_parquet(str(tmp_path / "p.parquet"))
    a, b = load_pairs(tmp_path / "p.jsonl"), load_dataset(tmp_path / "p.parquet")
    assert (a.target_ids, a.target_texts, a.query_ids, a.qrels, a.hard_negatives) == \
        (b.target_ids, b.target_texts, b.query_ids, b.qrels, b.hard_negatives)


@pytest.mark.parametrize("layout", ["data/{s}-00000-of-00001.parquet", "{s}.parquet", "{s}/part-0.csv"])
def test_hub_layout_folders(tmp_path, layout):
    root = tmp_path / "repo"
    for s, t in splits(negatives=2).items():
        f = root / layout.format(s=s)
        f.parent.mkdir(parents=True, exist_ok=True)
        t.to_csv(str(f), index=False) if f.suffix == ".csv" else t.to_parquet(str(f))
    (root / "README.md").write_text("# a dataset card without configs\n")
    ds = load_dataset(root)
    assert set(ds.qrels) == {"train", "validation", "test"}
    assert len(ds.positives("train")) == 24 and len(ds.positives("validation")) == 8
    first = task(1, 0, 2)[0]
    assert [ds.target_texts[ds.target_index[t]] for t in ds.hard_negatives[qid(ds, first["anchor"])]] == \
        [first["negative_1"], first["negative_2"]]


def test_hub_layout_with_several_files_per_split(tmp_path):
    rows = task(12)
    (tmp_path / "data").mkdir()
    table(rows[:6]).to_parquet(str(tmp_path / "data" / "train-00000-of-00002.parquet"))
    table(rows[6:]).to_parquet(str(tmp_path / "data" / "train-00001-of-00002.parquet"))
    ds = load_dataset(tmp_path)
    assert list(ds.qrels) == ["train"] and len(ds.positives("train")) == 12


def test_readme_configs_pick_the_files(tmp_path):
    root = tmp_path / "repo"
    for cfg, n in (("pair", 5), ("triplet", 7)):
        (root / cfg).mkdir(parents=True)
        table(task(n)).to_parquet(str(root / cfg / "train-00000-of-00001.parquet"))
    config = "- config_name: {0}\n  data_files:\n  - split: train\n    path: {0}/train-*\n"
    (root / "README.md").write_text("---\nconfigs:\n" + config.format("triplet") + "  default: true\n---\n")
    assert len(load_dataset(root).positives("train")) == 7
    (root / "README.md").write_text("---\nconfigs:\n" + config.format("pair") + config.format("triplet") + "---\n")
    with pytest.raises(DataError, match=r"several configs \(pair, triplet\)"):
        load_dataset(root)
    assert len(load_dataset(root / "pair").positives("train")) == 5  # a config's folder alone


def test_st_negative_columns_in_jsonl(tmp_path):
    f = tmp_path / "mined.jsonl"
    rows = [{"anchor": "q one", "positive": "p one", "negative_2": "n b", "negative_1": "n a", "negative_10": "n c"},
            {"anchor": "q two", "positive": "p two", "negative_1": "p one"}]  # fewer negatives on this row
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert is_hf(f)
    ds = load_dataset(f)
    one = qid(ds, "q one")
    assert [ds.target_texts[ds.target_index[t]] for t in ds.hard_negatives[one]] == ["n a", "n b", "n c"]
    assert ds.hard_negatives[qid(ds, "q two")] == [tid(ds, "p one")]
    assert ds.num_targets == 5


def test_jsonl_folders_split_like_the_pairs_reader(tmp_path):
    for s in ("train", "validation"):
        (tmp_path / f"{s}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in task(4, 0 if s == "train" else 4,
                                                                                          negatives=1)))
    ds = load_dataset(tmp_path)
    assert list(ds.qrels) == ["train", "dev"] and len(ds.hard_negatives) == 8
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "train.jsonl").write_text(json.dumps({"query": "q", "positive": "p", "neg": ["n"]}) + "\n")
    assert not is_hf(plain) and not is_hf(plain / "train.jsonl")  # plain pairs stay with data/pairs.py
    assert load_dataset(plain).hard_negatives


def test_jsonl_in_the_hub_layout(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train-00000-of-00001.jsonl").write_text(
        "".join(json.dumps({"query": r["anchor"], "pos": [r["positive"]]}) + "\n" for r in task(5)))
    ds = load_dataset(tmp_path)
    assert list(ds.qrels) == ["train"] and len(ds.positives("train")) == 5


def test_a_list_of_positives_and_query_columns(tmp_path):
    rows = [{"query": "q1", "positive": ["a", "b"], "negatives": ["c", "a"]},  # "a" is q1's positive: dropped
            {"query": "q2", "positive": ["b"], "negatives": []}]
    table(rows).to_parquet(str(tmp_path / "l.parquet"))
    ds = load_dataset(tmp_path / "l.parquet")
    q1 = qid(ds, "q1")
    assert ds.qrels["train"][q1] == {tid(ds, "a"): 1, tid(ds, "b"): 1}
    assert ds.hard_negatives[q1] == [tid(ds, "c")] and ds.is_multilabel()
    question = tmp_path / "qa.parquet"
    table([{"question": "why", "answer": "because", "id": 7}]).to_parquet(str(question))
    assert load_dataset(question).query_texts == ["why"]


def test_null_negatives_of_padded_tables_are_skipped(tmp_path):
    rows = [{"anchor": "q1", "positive": "p1", "negative_1": "n1", "negative_2": "n2"},
            {"anchor": "q2", "positive": "p2", "negative_1": "n3", "negative_2": None}]
    table(rows).save_to_disk(str(tmp_path / "s"))
    ds = load_dataset(tmp_path / "s")
    assert len(ds.hard_negatives[qid(ds, "q1")]) == 2 and len(ds.hard_negatives[qid(ds, "q2")]) == 1


def test_mine_hard_negatives_labelled_outputs(tmp_path):
    pair = [{"anchor": "q", "positive": "p", "label": 1}, {"anchor": "q", "positive": "n1", "label": 0},
            {"anchor": "q", "positive": "n2", "label": 0}]
    table(pair).to_parquet(str(tmp_path / "pair.parquet"))
    lst = tmp_path / "list.jsonl"
    lst.write_text(json.dumps({"anchor": "q", "positive": ["p", "n1", "n2"], "labels": [1, 0, 0]}) + "\n")
    for f in (tmp_path / "pair.parquet", lst):
        ds = load_dataset(f)
        assert ds.qrels["train"] == {qid(ds, "q"): {tid(ds, "p"): 1}}
        assert ds.hard_negatives[qid(ds, "q")] == [tid(ds, "n1"), tid(ds, "n2")]


# ---- commands ---------------------------------------------------------------------------------------------

def test_data_check(tmp_path, capsys):
    splits(negatives=2).save_to_disk(str(tmp_path / "dd"))
    assert main(["data", "check", str(tmp_path / "dd")]) == 0
    out = capsys.readouterr().out
    assert "validation" in out and "negatives given by the data: 80" in out
    assert main(["data", "check", str(tmp_path / "dd"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["targets"] == len({t for r in task(40, 0, 2) for k, t in r.items() if k != "anchor"})


TRAIN = ["--encoder", "static", "--steps", "2", "--batch-size", "4", "--quiet", "--no-zero-shot"]


@pytest.mark.parametrize("eval_split", ["validation", "test"])
def test_train_on_a_saved_dataset_dict(tmp_path, eval_split):
    splits().save_to_disk(str(tmp_path / "dd"))
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "dd"), "--out", str(out), *TRAIN, "--eval-split", eval_split]) == 0
    assert (out / "metrics.json").is_file()


def test_negatives_mined_uses_the_given_negatives(tmp_path, capsys):
    root = tmp_path / "repo" / "data"
    root.mkdir(parents=True)
    for s, t in splits(negatives=3).items():
        t.to_parquet(str(root / f"{s}-00000-of-00001.parquet"))
    ds = load_dataset(tmp_path / "repo")
    qids = list(ds.qrels["train"])
    lists = mined_lists(ds, qids, None)
    row = ds.target_index
    for q, negs, r in zip(qids, lists, task(24, 0, 3)):
        assert negs == [row[tid(ds, r[f"negative_{k}"])] for k in (1, 2, 3)]
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "repo"), "--out", str(out), *TRAIN, "--eval-split", "test",
                 "--negatives", "mined", "--num-negatives", "3"]) == 0
    assert (out / "metrics.json").is_file()
    splits().save_to_disk(str(tmp_path / "none"))  # no negatives in the data: the existing refusal
    err = one_line_error(capsys, main(["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r2"),
                                       *TRAIN, "--eval-split", "test", "--negatives", "mined", "--num-negatives", "1"]))
    assert "gives no negatives" in err


# ---- hf:NAME from the local cache -------------------------------------------------------------------------

def cache_like_load_dataset(tmp_path, repo_id, tables, config="default"):
    """What an online ``datasets.load_dataset(repo_id, config)`` leaves in the datasets cache
    (``OWNER___NAME/CONFIG/0.0.0/<hash>/``): the parquet builder run on local files, then moved there."""
    from datasets.packaged_modules.parquet.parquet import Parquet

    owner, name = repo_id.split("/")
    src = tmp_path / "build" / repo_id / config
    src.mkdir(parents=True)
    for s, t in tables.items():
        t.to_parquet(str(src / f"{s}.parquet"))
    b = Parquet(cache_dir=str(src / "cache"), dataset_name=name, config_name=config, config_id=config,
                hash="0123456789abcdef", data_files={s: str(src / f"{s}.parquet") for s in tables})
    b.download_and_prepare()
    dest = tmp_path / "hf-datasets-cache" / f"{owner}___{name}" / config
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(src / "cache" / name / config), str(dest))


def hub_snapshot(tmp_path, repo_id, files, readme=None):
    """A dataset repository in the Hub cache, as ``hf download REPO --repo-type dataset`` leaves it."""
    rev = "ab" * 20
    root = tmp_path / "hf-hub-cache" / f"datasets--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(rev)
    snap = root / "snapshots" / rev
    for rel, t in files.items():
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        t.to_parquet(str(snap / rel))
    if readme:
        (snap / "README.md").write_text(readme)
    return snap


def test_hf_name_from_the_datasets_cache(tmp_path, capsys):
    cache_like_load_dataset(tmp_path, "me/tiny", dict(splits(negatives=1)))
    ds = load_dataset("hf:me/tiny")
    assert list(ds.qrels) == ["train", "validation", "test"] and len(ds.positives("train")) == 24
    assert len(ds.hard_negatives) == 40 and ds.name == "me/tiny"
    assert not datasets.config.HF_HUB_OFFLINE  # offline mode only for the call
    cache_like_load_dataset(tmp_path, "me/tiny", {"train": table(ROWS)}, config="rows")
    check_rows_dataset(load_dataset("hf:me/tiny:rows"))
    with pytest.raises(DataError, match="hf:me/tiny: .*multiple .*configurations"):
        load_dataset("hf:me/tiny")  # two configs cached: name one
    out = tmp_path / "run"
    assert main(["train", "--data", "hf:me/tiny:default", "--out", str(out), *TRAIN, "--eval-split", "validation",
                 "--negatives", "mined", "--num-negatives", "1"]) == 0
    assert main(["data", "check", "hf:me/tiny:rows"]) == 0
    assert "hf:me/tiny:rows" in capsys.readouterr().out


def test_hf_name_from_the_hub_cache(tmp_path):
    hub_snapshot(tmp_path, "me/snap", {f"data/{s}-00000-of-00001.parquet": t for s, t in splits(2).items()})
    ds = load_dataset("hf:me/snap")
    assert list(ds.qrels) == ["train", "validation", "test"] and len(ds.hard_negatives) == 40
    card = ("---\nconfigs:\n- config_name: pair\n  data_files:\n  - split: train\n    path: pair/train-*\n"
            "- config_name: triplet\n  data_files:\n  - split: train\n    path: triplet/train-*\n---\n")
    snap = hub_snapshot(tmp_path, "me/cfg", {"pair/train-0.parquet": table(task(3)),
                                      "triplet/train-0.parquet": table(ROWS)}, readme=card)
    check_rows_dataset(load_dataset("hf:me/cfg:triplet"))
    assert len(load_dataset("hf:me/cfg:pair").query_ids) == 3
    with pytest.raises(DataError, match=r"hf:me/cfg: several configs \(pair, triplet\)"):
        load_dataset("hf:me/cfg")
    local = shutil.copytree(snap, tmp_path / "clone")  # hf:PATH, a local copy of a repository: read in place
    assert len(load_dataset(f"hf:{local}:pair").query_ids) == 3
    assert not (tmp_path / "hf-datasets-cache").exists()  # streamed: nothing prepared in the datasets cache


def test_hf_name_not_cached_is_one_line_and_never_downloads(tmp_path, capsys):
    err = one_line_error(capsys, main(["data", "check", "hf:nobody/nothing"]))
    assert "hf:nobody/nothing: not in the local Hugging Face cache" in err
    assert "datasets.load_dataset('nobody/nothing')" in err and str(tmp_path / "hf-datasets-cache") in err


# ---- errors: one line naming file, row and column ---------------------------------------------------------

def one_line_error(capsys, rc):
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("negminer: error: "), err
    return err.rstrip("\n")


def _parquet(name, rows):
    def make(tmp_path):
        table(rows).to_parquet(str(tmp_path / name))
        return tmp_path / name
    return make


def _csv(name, text):
    def make(tmp_path):
        (tmp_path / name).write_text(text)
        return tmp_path / name
    return make


def _jsonl(name, *rows):
    def make(tmp_path):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return tmp_path / name
    return make


def _saved(rows):
    def make(tmp_path):
        datasets.DatasetDict({"train": table(rows)}).save_to_disk(str(tmp_path / "dd"))
        return tmp_path / "dd"
    return make


GOOD = {"anchor": "q", "positive": "p"}
BAD = [
    ("no positive column", _parquet("x.parquet", [{"anchor": "q", "text": "t"}]),
     r"x\.parquet: no positive column \(expected one of positive, positives, pos, answer; has anchor, text\)"),
    ("no query column", _csv("x.csv", "sentence1,sentence2\na,b\n"),
     r"x\.csv: no query column .*has sentence1, sentence2"),
    ("null anchor", _parquet("x.parquet", [GOOD, {"anchor": None, "positive": "p"}]),
     r"x\.parquet:2: field 'anchor': expected a string, got null"),
    ("null positive in a saved split", _saved([GOOD, GOOD, {"anchor": "q", "positive": None}]),
     r"dd/train:3: field 'positive': expected a string, got null"),
    ("a number", _parquet("x.parquet", [{"anchor": 1, "positive": "p"}]), r"x\.parquet:1: field 'anchor': expected a "
     r"string, got int"),
    ("a number in a list", _jsonl("x.jsonl", {"anchor": "q", "positive": ["p", 3], "negative_1": "n"}),
     r"x\.jsonl:1: field 'positive\[1\]': expected a string, got int"),
    ("empty CSV cell", _csv("x.csv", "anchor,positive\nq,p\nq2,\n"), r"x\.csv:2: field 'positive': empty text"),
    ("blank text", _parquet("x.parquet", [{"anchor": " ", "positive": "p"}]), r"x\.parquet:1: field 'anchor': empty"),
    ("empty list", _parquet("x.parquet", [{"anchor": "q", "positive": []}]),
     r"x\.parquet:1: field 'positive': empty list"),
    ("lone surrogate", _jsonl("x.jsonl", GOOD | {"negative_1": "n"}, {"anchor": "q", "positive": "p",
                                                                       "negative_1": "bad \ud800"}),
     r"x\.jsonl:2: field 'negative_1': lone UTF-16 surrogate \\ud800"),
    ("score column", _parquet("x.parquet", [GOOD | {"score": 0.5}]), r"x\.parquet: field 'score': .*not positives"),
    ("label 2", _parquet("x.parquet", [GOOD | {"label": 2}]), r"x\.parquet:1: field 'label': expected a label 0 or 1"),
    ("labels of another length", _jsonl("x.jsonl", {"anchor": "q", "positive": ["a", "b"], "labels": [1]}),
     r"x\.jsonl:1: field 'labels': expected a list of 2 labels"),
    ("corrupt parquet", _csv("x.parquet", "PAR1 not really"), r"x\.parquet: cannot read"),
]


@pytest.mark.parametrize("make,pattern", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_data_is_one_line(tmp_path, capsys, make, pattern):
    path = make(tmp_path)
    err = one_line_error(capsys, main(["data", "check", str(path)]))
    assert str(tmp_path) in err and re.search(pattern, err), err


def test_without_datasets_installed(tmp_path, capsys, monkeypatch):
    table(ROWS).to_parquet(str(tmp_path / "x.parquet"))
    (tmp_path / "st.jsonl").write_text(json.dumps(GOOD | {"negative_1": "n"}) + "\n")
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    err = one_line_error(capsys, main(["data", "check", str(tmp_path / "x.parquet")]))
    assert err.endswith("x.parquet: reading it needs the `datasets` package: pip install negminer[hf]")
    assert main(["data", "check", str(tmp_path / "st.jsonl")]) == 0  # JSONL needs no datasets
    err = one_line_error(capsys, main(["data", "check", "hf:me/tiny"]))
    assert "pip install negminer[hf]" in err
