"""Mined negative lists per training query (``--negatives mined``): from the data's own negatives or a
JSONL file (``negminer mine``'s output, or any JSONL with ``query_id`` + ``neg_ids``, or ``query`` + ``neg``
texts), as store rows."""

from __future__ import annotations

from negminer.errors import ConfigError, DataError


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
