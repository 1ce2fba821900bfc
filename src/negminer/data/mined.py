"""Mined negative lists per training query (``--negatives mined``): from the data's own negatives or a
file of mined negatives, as store rows. The file is JSONL (``.gz`` too) or parquet (``.parquet``), in any of
``negminer mine``'s formats, told apart row by row:

  * ``flag``: ``query_id`` or the query text ``query``, and ``neg_ids`` (target ids) or ``neg`` (texts);
  * sentence-transformers' ``mine_hard_negatives`` formats (the query text in ``anchor`` or ``query``, or a
    ``query_id``; target texts):
      - ``triplet``: ``negative``;
      - ``n-tuple`` / ``n-tuple-scores``: ``negative_1``, ``negative_2``, ... (``scores`` ignored);
      - ``labeled-pair``: a document column (``positive``, else the one other column) and ``label``: 0 is a
        negative, 1 a positive (skipped); with ``score`` instead (output_scores=True) every document that
        is not a positive of the query in the data is a negative;
      - ``labeled-list``: a list of documents and ``labels`` (the 0s are negatives), or ``scores`` instead
        (the first document is the positive, as sentence-transformers writes it).

Negatives keep their order of first appearance per query (rank order, as mine writes them), repeats dropped.
"""

from __future__ import annotations

from pathlib import Path

from negminer.data.readers import field, id_field, id_value, json_records, text_value
from negminer.errors import ConfigError, DataError

LABELS = ("label", "labels", "score", "scores")
QUERY_KEYS = ("query_id", "query", "anchor")


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
    """Every format of ``negminer mine`` (see the module), JSONL or parquet: query id -> negative rows. Ids are
    strings or integers, texts strings."""
    by_text = {t: i for i, t in enumerate(dataset.target_inputs())}
    qid_of = {t: q for q, t in zip(dataset.query_ids, dataset.query_texts)}
    positives = _Positives(dataset)
    out: dict[str, list[int]] = {}
    for no, rec in (parquet_records(path) if str(path).lower().endswith(".parquet") else json_records(path)):
        qid = _query(path, no, rec, qid_of)
        negs = [(name, (id_value if is_id else text_value)(path, no, v, name), row if is_id else by_text)
                for name, v, is_id in _negatives(path, no, rec)]  # every type checked before any look-up
        maybe = _labeled_by_score(rec)
        for name, v, look in negs:
            if v not in look:
                raise DataError(path, f"{v[:60]!r} is not a target of the dataset", line=no, field=name)
            if maybe and look[v] in positives(qid):  # labeled-pair with scores: its positives' rows
                continue
            out.setdefault(qid, []).append(look[v])
    return {q: list(dict.fromkeys(v)) for q, v in out.items()}


def parquet_records(path):
    """(1-based row number, dict) of each row of a parquet file (pyarrow, installed with datasets)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "file not found")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"{p}: parquet is read with pyarrow: pip install 'negminer[hf]' (or use JSONL)") from None
    try:
        table = pq.read_table(p)
    except Exception as e:  # pyarrow's errors (ArrowInvalid, OSError) for a file that is not parquet
        raise DataError(p, f"cannot read as parquet ({type(e).__name__}: {str(e)[:200]})") from None
    for no, rec in enumerate(table.to_pylist(), 1):
        yield no, {k: v for k, v in rec.items() if v is not None}  # columns other rows have are null here


class _Positives:
    """query id -> its positive rows in any split of the data (for scored labeled pairs), built on first use."""

    def __init__(self, dataset):
        self.dataset, self.rows = dataset, None

    def __call__(self, qid: str) -> set[int]:
        if self.rows is None:
            self.rows = {}
            for split in self.dataset.qrels:
                for q, pos in self.dataset.positives(split).items():
                    self.rows.setdefault(q, set()).update(pos)
        return self.rows.get(qid, set())


def _labeled_by_score(rec: dict) -> bool:
    """A labeled-pair row with a score instead of a label: its document may be a positive."""
    return "score" in rec and "label" not in rec and isinstance(_doc(rec)[1], str)


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


def _doc(rec: dict) -> tuple[str | None, object]:
    """(name, value) of a labeled row's document column: ``positive``, else the one column that is neither the
    query nor a label / score; (None, None) when there is no such single column."""
    if "positive" in rec:
        return "positive", rec["positive"]
    rest = [k for k in rec if k not in LABELS and k not in QUERY_KEYS]
    return (rest[0], rec[rest[0]]) if len(rest) == 1 else (None, None)


def _negatives(path, no: int, rec: dict) -> list[tuple[str, object, bool]]:
    """(field name, value, is an id) of each negative of a record."""
    st = sorted((int(k[9:]), k) for k in rec if k.startswith("negative_") and k[9:].isdigit())
    if st:
        return [(k, rec[k], False) for _, k in st]
    key = next((k for k in ("neg_ids", "neg", "negative") if k in rec), None)
    if key is None and any(k in rec for k in LABELS):
        return _labeled(path, no, rec)
    if key is None:
        raise DataError(path, "needs 'neg_ids' (target ids), 'neg', 'negative' or 'negative_1', ... (target texts), "
                        "or a labeled row's 'label' / 'labels'", line=no, field="neg_ids")
    vals = rec[key]
    if key == "negative" and isinstance(vals, str):
        return [(key, vals, False)]
    if not isinstance(vals, list):
        raise DataError(path, f"expected a list, got {type(vals).__name__}", line=no, field=key)
    return [(f"{key}[{i}]", v, key == "neg_ids") for i, v in enumerate(vals)]


def _labeled(path, no: int, rec: dict) -> list[tuple[str, object, bool]]:
    """The negatives of a labeled-pair / labeled-list row (sentence-transformers' labeled formats)."""
    name, doc = _doc(rec)
    if name is None:
        raise DataError(path, "a labeled row needs its documents as 'positive' (or one column besides the query and "
                        "the label)", line=no, field="positive")
    if isinstance(doc, list):  # labeled-list
        labels = rec.get("labels")
        if labels is None:  # scores instead: sentence-transformers puts the positive first
            if not isinstance(rec.get("scores"), list):
                raise DataError(path, "a labeled list needs 'labels' (or 'scores') as a list", line=no, field="labels")
            return [(f"{name}[{i}]", v, False) for i, v in enumerate(doc) if i > 0]
        if not isinstance(labels, list) or len(labels) != len(doc):
            raise DataError(path, f"expected a list of {len(doc)} labels (one per document), got "
                            f"{len(labels) if isinstance(labels, list) else type(labels).__name__}", line=no,
                            field="labels")
        return [(f"{name}[{i}]", v, False) for i, (v, lab) in enumerate(zip(doc, labels)) if _label(path, no, lab) == 0]
    if "label" in rec:  # labeled-pair
        return [(name, doc, False)] if _label(path, no, rec["label"]) == 0 else []
    if "score" in rec:  # labeled-pair with scores: positives are told apart by the data (read_mined_file)
        return [(name, doc, False)]
    raise DataError(path, f"expected a list of documents with 'labels', or one document with 'label', got "
                    f"{type(doc).__name__}", line=no, field=name)


def _label(path, no: int, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v not in (0, 1):
        raise DataError(path, f"a label is 0 (negative) or 1 (positive), got {v!r}", line=no, field="label")
    return int(v)
