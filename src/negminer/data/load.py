"""``load_dataset(spec)``: detect the layout of a folder or file, or build builtin/synthetic data, or read
``hf:NAME[:CONFIG]`` from the local Hugging Face cache (data/hfdata.py)."""

from __future__ import annotations

from pathlib import Path

from negminer.data.dataset import Dataset
from negminer.errors import DataError


def load_dataset(spec: str | Path) -> Dataset:
    s = str(spec)
    if s.startswith("builtin:"):
        from negminer.data.builtin import load_builtin

        return load_builtin(s.split(":", 1)[1])
    if s.startswith("synthetic:"):
        from negminer.data.synthetic import load_synthetic

        return load_synthetic(s)
    if s.startswith("hf:"):
        from negminer.data.hfdata import load_hub

        return load_hub(s[3:])
    p = Path(s).expanduser()
    if not p.exists():
        raise DataError(p, "no such file or folder (or use builtin:pycode, synthetic:N, hf:NAME[:CONFIG])")
    from negminer.data.beir import is_beir, load_beir
    from negminer.data.hfdata import is_hf, load_hf
    from negminer.data.msmarco import is_msmarco, load_msmarco
    from negminer.data.pairs import load_pairs, pair_files
    from negminer.data.xmc import is_xmc, load_xmc

    if is_beir(p) or (p / "corpus.jsonl").is_file() or (p / "corpus.jsonl.gz").is_file():
        return load_beir(p)  # names any missing BEIR file
    if is_msmarco(p):
        return load_msmarco(p)
    if is_xmc(p):
        return load_xmc(p)
    if is_hf(p):  # datasets' save_to_disk, parquet / csv / json / arrow, the Hub's layout, ST's negative_1.. JSONL
        return load_hf(p)
    if (p.is_file() and p.name.endswith((".jsonl", ".jsonl.gz"))) or (p.is_dir() and pair_files(p)):
        return load_pairs(p)
    raise DataError(p, "unknown dataset layout: looked for BEIR (corpus.jsonl + queries.jsonl + qrels/), "
                       "MS MARCO TSV (collection.tsv + queries.<split>.tsv + qrels.<split>.tsv), JSONL pairs "
                       "(a .jsonl file, a folder with train.jsonl/dev.jsonl/test.jsonl or a single .jsonl), the "
                       "Extreme Classification Repository's (lbl.json.gz + trn.json.gz, trn_X_Y.txt + raw/trn_X.txt "
                       "or trn_X_Xf.txt, train.txt) and Hugging Face datasets' (a save_to_disk folder, .parquet / "
                       ".csv / .json / .arrow files, train.parquet or data/train-00000-of-00001.parquet)")
