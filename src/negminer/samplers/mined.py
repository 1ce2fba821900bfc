"""Mined negatives: each query's fixed list of hard negatives, k drawn per step from it.

The workflow most users follow today (sentence-transformers ``mine_hard_negatives`` then
MultipleNegativesRankingLoss; FlagEmbedding's hard-negative mining script; DPR's BM25 negatives,
Karpukhin et al., EMNLP 2020): mine once with the starting model, then train on the lists. The lists
come from the data (JSONL ``negative`` fields) or from a file (``--mined-file``, written by
``negminer mine``, or any JSONL with ``query_id`` + ``neg_ids``, or ``query`` + ``neg`` texts).
Each step draws k distinct entries of the query's list uniformly; positives and duplicates are
masked; a list shorter than k leaves masked slots. No proposal over all targets: uncorrected.

Example::  negminer mine --model minilm --data D --out neg.jsonl
           negminer train --data D --negatives mined --mined-file neg.jsonl --share-negatives
"""

from __future__ import annotations

import torch

from negminer.errors import ConfigError, DataError
from negminer.samplers.base import Batch, Draw, Sampler


class MinedSampler(Sampler):
    name = "mined"
    needs_store = False

    def __init__(self, k: int, lists: list[list[int]] | None = None, **kw):
        super().__init__(k, **kw)
        self.lists = [torch.as_tensor(x, dtype=torch.long) for x in (lists or [])]

    def pool_size(self, store):
        return max((len(x) for x in self.lists), default=0) + 1

    def sample(self, q, batch: Batch, store) -> Draw:
        if batch.queries is None:
            raise ValueError("mined negatives need Batch.queries (the training query of each row)")
        b, k = len(q), self.k
        ids = torch.zeros(b, k, dtype=torch.long)
        short = torch.ones(b, k, dtype=torch.bool)
        for i, qi in enumerate(batch.queries.tolist()):
            lst = self.lists[qi]
            n = min(k, len(lst))
            if n:
                ids[i, :n] = lst[torch.randperm(len(lst), generator=batch.generator)[:n]]
                short[i, :n] = False
        mask = short | batch.excl.contains(ids)
        return Draw(ids.masked_fill(mask, 0), mask)


def mined_lists(dataset, qids: list[str], path: str | None) -> list[list[int]]:
    """Per training query (in ``qids`` order), the rows of its mined negatives: from ``path`` if
    given, else the data's own negatives (``dataset.hard_negatives``)."""
    row = {t: i for i, t in enumerate(dataset.target_ids)}
    src = read_mined_file(path, dataset, row) if path else {
        q: [row[t] for t in ts if t in row] for q, ts in dataset.hard_negatives.items()}
    if not any(src.get(q) for q in qids):
        where = path or f"the data {dataset.name}"
        raise ConfigError(f"--negatives mined: {where} gives no negatives for any training query "
                          "(mine some with `negminer mine`, or pass --mined-file)")
    return [src.get(q, []) for q in qids]


def read_mined_file(path: str, dataset, row: dict[str, int]) -> dict[str, list[int]]:
    from negminer.data.readers import json_records

    by_text = {t: i for i, t in enumerate(dataset.target_inputs())}
    qid_of = {t: q for q, t in zip(dataset.query_ids, dataset.query_texts)}
    out: dict[str, list[int]] = {}
    for no, rec in json_records(path):
        qid = rec.get("query_id")
        if qid is None:
            if not isinstance(rec.get("query"), str):
                raise DataError(path, "needs 'query_id' or a 'query' string", line=no, field="query_id")
            qid = qid_of.get(rec["query"])
            if qid is None:
                raise DataError(path, "query text not among the dataset's queries", line=no, field="query")
        qid = str(qid)
        if "neg_ids" in rec:
            vals, look, fld = rec["neg_ids"], row, "neg_ids"
        elif "neg" in rec:
            vals, look, fld = rec["neg"], by_text, "neg"
        else:
            raise DataError(path, "needs 'neg_ids' (target ids) or 'neg' (target texts)", line=no, field="neg_ids")
        if not isinstance(vals, list):
            raise DataError(path, "expected a list", line=no, field=fld)
        rows = []
        for v in vals:
            r = look.get(str(v)) if fld == "neg_ids" else look.get(v)
            if r is None:
                raise DataError(path, f"{str(v)[:60]!r} is not a target of the dataset", line=no, field=fld)
            rows.append(r)
        out.setdefault(qid, []).extend(rows)
    return {q: list(dict.fromkeys(v)) for q, v in out.items()}
