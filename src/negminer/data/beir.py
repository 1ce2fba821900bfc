"""BEIR layout: corpus.jsonl {"_id","title","text"}, queries.jsonl {"_id","text"},
qrels/{split}.tsv (header ``query-id corpus-id score``, tab-separated). ``.gz`` files are read too.
Ids are JSON strings or integers (as their decimal string); title and text must be strings.
"""

from __future__ import annotations

from pathlib import Path

from negminer.data.dataset import Dataset
from negminer.data.readers import IdTable, field, grade, id_field, json_records, tsv_rows
from negminer.errors import DataError


def _find(root: Path, name: str) -> Path | None:
    for p in (root / name, root / f"{name}.gz"):
        if p.is_file():
            return p
    return None


def _need(root: Path, name: str) -> Path:
    p = _find(root, name)
    if p is None:
        raise DataError(root / name, "file not found (BEIR layout: corpus.jsonl, queries.jsonl, qrels/*.tsv)")
    return p


def is_beir(root: Path) -> bool:
    return root.is_dir() and _find(root, "corpus.jsonl") is not None and _find(root, "queries.jsonl") is not None


def read_corpus(path: Path):
    ids, titles, texts, table = [], [], [], IdTable(path, "target")
    for no, rec in json_records(path):
        tid = id_field(path, no, rec, "_id")
        table.add(no, tid)
        title = field(path, no, rec, "title", required=False)
        text = field(path, no, rec, "text")
        if not text.strip() and not title.strip():
            raise DataError(path, "empty text (and no title)", line=no, field="text")
        ids.append(tid), titles.append(title), texts.append(text)
    return ids, titles, texts


def read_queries(path: Path):
    ids, texts, table = [], [], IdTable(path, "query")
    for no, rec in json_records(path):
        qid = id_field(path, no, rec, "_id")
        table.add(no, qid)
        ids.append(qid), texts.append(field(path, no, rec, "text", nonempty=True))
    return ids, texts


ID_NAMES = {"id", "_id", "qid", "pid", "docid", "doc_id", "query-id", "query_id", "queryid", "corpus-id", "corpus_id"}


def is_header(cols: list[str], query_ids=None) -> bool:
    """A first line that names columns: a known id column name, or (qrels, given ``query_ids``) a
    non-numeric last column (the score) whose first column is not a known query id."""
    if cols[0].strip().lower() in ID_NAMES:
        return True
    if query_ids is None or len(cols) < 3 or cols[0] in query_ids:
        return False
    try:
        float(cols[-1])
        return False
    except ValueError:
        return True


def read_qrels(path: Path, query_ids: set, target_ids: set) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for no, cols in tsv_rows(path, (3, 4)):
        if no == 1 and is_header(cols, query_ids):
            continue
        qid, tid, score = (cols[0], cols[1], cols[2]) if len(cols) == 3 else (cols[0], cols[2], cols[3])
        if qid not in query_ids:
            raise DataError(path, f"unknown query id {qid!r}", line=no, field="query-id")
        if tid not in target_ids:
            raise DataError(path, f"unknown corpus id {tid!r}", line=no, field="corpus-id")
        g = grade(path, no, score)
        out.setdefault(qid, {})[tid] = max(g, out.get(qid, {}).get(tid, g))
    return out


def load_beir(root: str | Path, name: str | None = None) -> Dataset:
    root = Path(root)
    ids, titles, texts = read_corpus(_need(root, "corpus.jsonl"))
    qids, qtexts = read_queries(_need(root, "queries.jsonl"))
    qset, tset = set(qids), set(ids)
    qrels = {}
    qdir = root / "qrels"
    files = sorted(qdir.glob("*.tsv")) + sorted(qdir.glob("*.tsv.gz")) if qdir.is_dir() else []
    if not files:
        raise DataError(qdir, "no qrels/*.tsv files (BEIR layout needs qrels/{train,dev,test}.tsv)")
    order = {"train": 0, "dev": 1, "validation": 1, "test": 2}
    for p in sorted(files, key=lambda f: (order.get(f.name.split(".tsv")[0], 3), f.name)):
        split = p.name.split(".tsv")[0]
        qrels[split] = read_qrels(p, qset, tset)
    return Dataset(name or root.name, ids, texts, titles, qids, qtexts, qrels, source=str(root))
