import torch

from negminer.eval.runfile import read_run, write_run
from negminer.eval.search import exact_topk, faiss_topk


def test_chunked_topk_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    q, t = torch.randn(37, 16, generator=g), torch.randn(1000, 16, generator=g)
    s, i = exact_topk(q, t, 50, query_chunk=8, target_chunk=97)
    bs, bi = (q @ t.T).topk(50, dim=1)
    assert torch.equal(i, bi) and torch.allclose(s, bs)


def test_faiss_equals_exact():
    g = torch.Generator().manual_seed(1)
    q, t = torch.randn(20, 8, generator=g), torch.randn(500, 8, generator=g)
    _, i = faiss_topk(q, t, 10)
    assert torch.equal(i, exact_topk(q, t, 10)[1])


def test_k_larger_than_corpus():
    s, i = exact_topk(torch.randn(3, 4), torch.randn(5, 4), 100, target_chunk=2)
    assert i.shape == (3, 5) and sorted(i[0].tolist()) == list(range(5))


def test_run_file_round_trip(tmp_path):
    run = {"q1": [("d3", 0.9), ("d1", 0.5)], "q2": [("d2", 0.1)]}
    write_run(tmp_path / "run.trec", run)
    assert read_run(tmp_path / "run.trec") == run
    assert (tmp_path / "run.trec").read_text().splitlines()[0] == "q1 Q0 d3 1 0.900000 negminer"
