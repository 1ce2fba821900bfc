"""MS MARCO-style TSV: ``collection.tsv`` (pid<TAB>text or pid<TAB>title<TAB>text),
``queries.<split>.tsv`` (qid<TAB>text) and ``qrels.<split>.tsv`` in TREC form (qid 0 pid grade) or
two columns (qid pid, grade 1); header lines are skipped. The split is the file name's middle part:
``queries.dev.small.tsv`` + ``qrels.dev.small.tsv`` -> split ``dev.small``.
"""

from __future__ import annotations

from pathlib import Path

from negminer.data.beir import is_header
from negminer.data.dataset import Dataset
from negminer.data.readers import IdTable, grade, tsv_rows
from negminer.errors import DataError


def is_msmarco(root: Path) -> bool:
    return root.is_dir() and ((root / "collection.tsv").is_file() or (root / "collection.tsv.gz").is_file())


def _split(p: Path, prefix: str) -> str:
    return p.name[len(prefix) + 1:].split(".tsv")[0]


def load_msmarco(root: str | Path, name: str | None = None) -> Dataset:
    root = Path(root)
    coll = root / "collection.tsv" if (root / "collection.tsv").is_file() else root / "collection.tsv.gz"
    ids, titles, texts, table = [], [], [], IdTable(coll, "passage")
    for no, cols in tsv_rows(coll, (2, 3)):
        if no == 1 and is_header(cols):
            continue
        table.add(no, cols[0])
        title, text = ("", cols[1]) if len(cols) == 2 else (cols[1], cols[2])
        if not text.strip() and not title.strip():
            raise DataError(coll, "empty text", line=no, field="text")
        ids.append(cols[0]), titles.append(title), texts.append(text)
    queries: dict[str, str] = {}  # qid -> text, over all queries.<split>.tsv files
    query_files = sorted(root.glob("queries.*.tsv")) + sorted(root.glob("queries.*.tsv.gz"))
    if not query_files:
        raise DataError(root, "no queries.<split>.tsv next to collection.tsv")
    for qf in query_files:
        qtable = IdTable(qf, "query")
        for no, cols in tsv_rows(qf, (2,)):
            if no == 1 and is_header(cols):
                continue
            qid, text = cols
            qtable.add(no, qid)  # duplicates within one file are errors
            if not text.strip():
                raise DataError(qf, "empty text", line=no, field="text")
            if queries.setdefault(qid, text) != text:  # dev.small repeats dev: same text is fine
                raise DataError(qf, f"query id {qid!r} has another text in an earlier queries file", line=no)
    qids, qtexts = list(queries), list(queries.values())
    qset, tset = set(qids), set(ids)
    qrels: dict = {}
    order = {"train": 0, "dev": 1, "test": 2}
    qrel_files = list(root.glob("qrels.*.tsv")) + list(root.glob("qrels.*.tsv.gz"))
    for rf in sorted(qrel_files, key=lambda f: (order.get(_split(f, "qrels").split(".")[0], 3), f.name)):
        split = qrels.setdefault(_split(rf, "qrels"), {})
        for no, cols in tsv_rows(rf, (2, 3, 4)):
            if no == 1 and is_header(cols, qset):
                continue
            if len(cols) == 4:
                qid, pid, g = cols[0], cols[2], grade(rf, no, cols[3])
            elif len(cols) == 3:
                qid, pid, g = cols[0], cols[1], grade(rf, no, cols[2])
            else:
                qid, pid, g = cols[0], cols[1], 1
            if qid not in qset:
                raise DataError(rf, f"unknown query id {qid!r}", line=no, field="qid")
            if pid not in tset:
                raise DataError(rf, f"unknown passage id {pid!r}", line=no, field="pid")
            split.setdefault(qid, {})[pid] = g
    if not qrels:
        raise DataError(root, "no qrels.<split>.tsv next to collection.tsv")
    return Dataset(name or root.name, ids, texts, titles, qids, qtexts, qrels, source=str(root))
