import json

from negminer.cli import main
from negminer.data import load_dataset


def test_mine_flag_and_st_formats(tiny_beir, tmp_path, capsys):
    out = tmp_path / "neg.jsonl"
    assert main(["mine", "--model", "static", "--data", str(tiny_beir), "--out", str(out), "--top-k", "5",
                 "--quiet"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    ds = load_dataset(tiny_beir)
    assert len(rows) == 120
    for r in rows[:20]:
        assert len(r["neg"]) == 5 and set(r["neg_ids"]).isdisjoint(r["pos_ids"])
        assert r["neg_scores"] == sorted(r["neg_scores"], reverse=True)
        assert r["query"] == ds.query_texts[ds.query_index[r["query_id"]]]
    st = tmp_path / "st.jsonl"
    assert main(["mine", "--model", "static", "--data", str(tiny_beir), "--out", str(st), "--top-k", "3",
                 "--format", "st", "--skip", "2", "--quiet"]) == 0
    first = json.loads(st.read_text().splitlines()[0])
    assert list(first) == ["anchor", "positive", "negative_1", "negative_2", "negative_3"]
    flag_first = rows[0]
    assert first["negative_1"] == flag_first["neg"][2]  # skip 2 ranks


def test_mine_margin_drops_candidates_near_the_positive(tiny_beir, tmp_path):
    out = tmp_path / "m.jsonl"
    assert main(["mine", "--model", "static", "--data", str(tiny_beir), "--out", str(out), "--top-k", "50",
                 "--margin", "0.05", "--quiet"]) == 0
    ds = load_dataset(tiny_beir)
    from negminer.encoders import build_encoder

    m = build_encoder("static")
    for r in [json.loads(x) for x in out.read_text().splitlines()][:10]:
        q = m.encode_queries([r["query"]])
        s_pos = float(q @ m.encode_targets(r["pos"]).T)
        assert all(s <= s_pos - 0.05 + 1e-5 for s in r["neg_scores"])


def test_diagnose_command(tiny_beir, capsys):
    assert main(["diagnose", "--data", str(tiny_beir), "--encoder", "static", "--negatives", "exact",
                 "--batch-size", "8", "--batches", "2", "--num-negatives", "8"]) == 0
    out = capsys.readouterr().out
    assert "tv" in out and "grad_cosine" in out


def test_diagnostics_of_the_exact_sampler_are_exact(tiny_beir, tmp_path):
    from negminer.config import resolve
    from negminer.diagnostics import diagnose_trainer
    from negminer.train.trainer import Trainer

    cfg = resolve({"data": str(tiny_beir), "out": str(tmp_path), "encoder": "static", "negatives": "exact",
                   "batch_size": 8, "num_negatives": 8, "quiet": True})
    tr = Trainer(cfg)
    tr.setup_sampler()
    d = diagnose_trainer(tr, 0)
    assert d["tv"] < 1e-4 and d["kl"] < 1e-4
    cfg_u = resolve({**cfg.to_dict(), "negatives": "uniform"})
    tu = Trainer(cfg_u)
    du = diagnose_trainer(tu, 0)
    assert du["tv"] > 0.1 and du["grad_rel_error"] > d["grad_rel_error"] * 0.5
