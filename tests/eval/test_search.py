import sys

import pytest
import torch

from negminer.errors import ConfigError, DataError
from negminer.eval.runfile import read_run, write_run
from negminer.eval.search import exact_topk, faiss_topk, topk


@pytest.mark.parametrize("qc,tc", [(8, 97), (1024, 65536), (1, 1000), (37, 13)])
def test_chunked_topk_equals_brute_force(qc, tc):
    g = torch.Generator().manual_seed(0)
    q, t = torch.randn(37, 16, generator=g), torch.randn(1000, 16, generator=g)
    s, i = exact_topk(q, t, 50, query_chunk=qc, target_chunk=tc)
    bs, bi = (q @ t.T).topk(50, dim=1)
    assert torch.equal(i, bi) and torch.allclose(s, bs)


def test_faiss_equals_exact():
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(1)
    q, t = torch.randn(20, 8, generator=g), torch.randn(500, 8, generator=g)
    fs, fi = faiss_topk(q, t, 10)
    es, ei = topk(q, t, 10, backend="exact")
    assert torch.equal(fi, ei) and torch.allclose(fs, es, atol=1e-5)
    assert torch.equal(topk(q, t, 10, backend="faiss")[1], ei)


def test_missing_faiss_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` fail
    with pytest.raises(ConfigError, match="faiss"):
        topk(torch.randn(2, 4), torch.randn(5, 4), 3, backend="faiss")


def test_unknown_backend():
    with pytest.raises(ConfigError, match="hnsw"):
        topk(torch.randn(2, 4), torch.randn(5, 4), 3, backend="hnsw")


def test_k_larger_than_corpus_and_no_queries():
    s, i = exact_topk(torch.randn(3, 4), torch.randn(5, 4), 100, target_chunk=2)
    assert i.shape == (3, 5) and sorted(i[0].tolist()) == list(range(5))
    assert (s[:, :-1] >= s[:, 1:]).all()
    assert exact_topk(torch.randn(0, 4), torch.randn(5, 4), 3)[1].shape == (0, 3)


def test_run_file_round_trip(tmp_path):
    run = {"q1": [("d3", 0.9), ("d1", 0.5)], "q2": [("d2", -0.125)]}
    write_run(tmp_path / "sub" / "run.trec", run, tag="t")
    assert read_run(tmp_path / "sub" / "run.trec") == run
    assert (tmp_path / "sub" / "run.trec").read_text().splitlines() == [
        "q1 Q0 d3 1 0.9 t", "q1 Q0 d1 2 0.5 t", "q2 Q0 d2 1 -0.125 t"]
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name != "run.trec"]  # no temp file left


def test_read_run_orders_by_rank_and_reports_bad_lines(tmp_path):
    p = tmp_path / "r.trec"
    p.write_text("q1 Q0 b 2 0.5 x\n\nq1 Q0 a 1 0.9 x\n")
    assert read_run(p) == {"q1": [("a", 0.9), ("b", 0.5)]}
    p.write_text("q1 Q0 a 1 0.9 x\nq1 Q0 b 2 0.5\n")
    with pytest.raises(DataError, match=r"r.trec:2: expected 6 columns"):
        read_run(p)
    p.write_text("q1 Q0 a one 0.9 x\n")
    with pytest.raises(DataError, match=r"r.trec:1: .*not a number"):
        read_run(p)
    with pytest.raises(DataError, match="cannot read"):
        read_run(tmp_path / "missing.trec")
