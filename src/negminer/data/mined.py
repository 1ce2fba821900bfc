"""Mined negative lists per training query (``--negatives mined``): from the data's own negatives or a
JSONL file (``negminer mine``'s output in either format, or any JSONL with ``query_id`` + ``neg_ids``, or
``query`` + ``neg`` texts), as store rows."""

from __future__ import annotations

from negminer.data.readers import field, id_field, id_value, json_records, text_value
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
    """Both formats of ``negminer mine``, told apart line by line: ``flag`` (``query_id`` or ``query``, and
    ``neg_ids`` target ids or ``neg`` target texts) and ``st`` (``anchor``, ``negative_1`` ... texts; a
    triplet's single ``negative`` too). Ids are strings or integers, texts strings."""
    by_text = {t: i for i, t in enumerate(dataset.target_inputs())}
    qid_of = {t: q for q, t in zip(dataset.query_ids, dataset.query_texts)}
    out: dict[str, list[int]] = {}
    for no, rec in json_records(path):
        qid = _query(path, no, rec, qid_of)
        negs = [(name, (id_value if is_id else text_value)(path, no, v, name), row if is_id else by_text)
                for name, v, is_id in _negatives(path, no, rec)]  # every type checked before any look-up
        for name, v, look in negs:
            if v not in look:
                raise DataError(path, f"{v[:60]!r} is not a target of the dataset", line=no, field=name)
            out.setdefault(qid, []).append(look[v])
    return {q: list(dict.fromkeys(v)) for q, v in out.items()}


def _query(path, no: int, rec: dict, qid_of: dict[str, str]) -> str:
    if rec.get("query_id") is not None:
        return id_field(path, no, rec, "query_id")
    key = next((k for k in ("query", "anchor") if k in rec), None)
    if key is None:
        raise DataError(path, "needs 'query_id', or the query text as 'query' or 'anchor'", line=no, field="query_id")
    qid = qid_of.get(field(path, no, rec, key))
    if qid is None:
        raise DataError(path, "query text not among the dataset's queries", line=no, field=key)
    return qid


def _negatives(path, no: int, rec: dict) -> list[tuple[str, object, bool]]:
    """(field name, value, is an id) of each negative of a record."""
    st = sorted((int(k[9:]), k) for k in rec if k.startswith("negative_") and k[9:].isdigit())
    if st:
        return [(k, rec[k], False) for _, k in st]
    key = next((k for k in ("neg_ids", "neg", "negative") if k in rec), None)
    if key is None:
        raise DataError(path, "needs 'neg_ids' (target ids), 'neg' or 'negative_1', ... (target texts)", line=no,
                        field="neg_ids")
    vals = rec[key]
    if key == "negative" and isinstance(vals, str):
        return [(key, vals, False)]
    if not isinstance(vals, list):
        raise DataError(path, f"expected a list, got {type(vals).__name__}", line=no, field=key)
    return [(f"{key}[{i}]", v, key == "neg_ids") for i, v in enumerate(vals)]
