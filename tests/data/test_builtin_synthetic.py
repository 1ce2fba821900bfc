import numpy as np

from negminer.data import load_dataset
from negminer.data.synthetic import load_synthetic


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


def test_synthetic_scales_lazily_and_has_planted_clusters():
    ds = load_synthetic("synthetic:5000000")
    assert ds.num_targets == 5_000_000
    assert ds.target_index["t4999999"] == 4_999_999
    words = lambda s: set(s.split())  # noqa: E731
    same = [len(words(ds.target_texts[i]) & words(ds.target_texts[i + 1])) for i in range(0, 800, 8)]
    other = [len(words(ds.target_texts[i]) & words(ds.target_texts[i + 4000])) for i in range(0, 800, 8)]
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
