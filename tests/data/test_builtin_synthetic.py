import numpy as np
import pytest

from negminer.data import load_dataset
from negminer.data.builtin import cache_dir
from negminer.data.synthetic import Planted, load_synthetic
from negminer.errors import DataError


def test_builtin_pycode_is_deterministic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("NEGMINER_CACHE", str(tmp_path))
    a = load_dataset("builtin:pycode")
    assert len(a.positives("test")) == 500 and len(a.positives("train")) >= 2000
    monkeypatch.setenv("NEGMINER_CACHE", str(tmp_path / "again"))
    b = load_dataset("builtin:pycode")
    assert a.target_ids == b.target_ids and a.qrels == b.qrels
    for qid, (row,) in list(a.positives("test").items())[:200]:  # the docstring is not in the target
        assert a.query_texts[a.query_index[qid]] not in " ".join(a.target_texts[row].split())
    assert all(t.startswith(("def ", "class ", "async def ", "@")) for t in a.target_texts)
    assert len(set(a.target_texts)) == a.num_targets <= 5000 and max(map(len, a.target_texts)) <= 1500
    assert all(len(q.split()) >= 4 for q in a.query_texts) and len(set(a.query_texts)) == len(a.query_texts)
    assert all(len(j) == 1 for split in a.qrels.values() for j in split.values())  # one positive each
    assert not set(a.qrels["train"]) & set(a.qrels["test"])
    assert "json.dumps" in a.target_index and a.target_texts[a.target_index["json.dumps"]].startswith("def dumps(")
    # later loads read the cache, not the stdlib
    monkeypatch.setattr("negminer.data.builtin.build_pycode", lambda out: pytest.fail("rebuilt"))
    assert load_dataset("builtin:pycode").target_ids == b.target_ids
    assert (cache_dir() / "corpus.jsonl").is_file() and not list(cache_dir().parent.glob(".*"))  # no temp left


def test_synthetic_scales_lazily_and_has_planted_clusters():
    ds = load_synthetic("synthetic:1000000")
    assert ds.num_targets == 1_000_000 and ds.target_inputs() is ds.target_texts  # stays lazy
    assert ds.target_index["t999999"] == 999_999 and "t1000000" not in ds.target_index
    assert len(ds.positives("train")) == 20_000 and len(ds.positives("test")) == 1_000
    words = lambda s: set(s.split())  # noqa: E731
    same = [len(words(ds.target_texts[i]) & words(ds.target_texts[i + 1])) for i in range(0, 800, 8)]
    other = [len(words(ds.target_texts[i]) & words(ds.target_texts[i + 4000])) for i in range(0, 800, 8)]
    assert all(words(ds.target_texts[i]) != words(ds.target_texts[i + 1]) for i in range(0, 800, 8))
    assert np.mean(same) >= 7 and np.mean(other) < 1
    pos = ds.positives("train")
    rng = np.random.default_rng(0)
    for qid in list(pos)[:50]:
        q = words(ds.query_texts[ds.query_index[qid]])
        (row,) = pos[qid]
        rand = int(rng.integers(ds.num_targets))
        assert len(q & words(ds.target_texts[row])) > len(q & words(ds.target_texts[rand]))


def test_synthetic_is_deterministic():
    a, b = load_synthetic("synthetic:2000:seed=3"), load_synthetic("synthetic:2000:seed=3")
    assert a.qrels == b.qrels and a.target_texts[17] == b.target_texts[17]
    assert load_synthetic("synthetic:2000:seed=4").target_texts[17] != a.target_texts[17]


def test_synthetic_vectorised_words_match_and_options():
    ds = load_synthetic("synthetic:50000000:seed=7,cluster=4,vocab=1000,queries=300,test=100")
    assert ds.num_targets == 50_000_000 and len(ds.positives("test")) == 100 and len(ds.positives("train")) == 200
    gen = Planted(50_000_000, 7, 4, 1000, 8, 4)
    rows = np.array([0, 1, 3, 4, 49_999_999])
    m = gen.words_matrix(rows)
    assert m.shape == (5, 12) and m.max() < 1000
    assert [" ".join(f"w{w}" for w in r) for r in m] == [ds.target_texts[int(r)] for r in rows]
    assert (m[0, :8] == m[2, :8]).all() and not (m[2, :8] == m[3, :8]).all()  # cluster = 4 rows


@pytest.mark.parametrize("spec", ["synthetic:abc", "synthetic:100:colour=3", "synthetic:10", "synthetic:100:own=0"])
def test_synthetic_bad_spec(spec):
    with pytest.raises(DataError):
        load_synthetic(spec)
