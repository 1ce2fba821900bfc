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
    qids, qtexts, qtable = [], [], IdTable(root, "query")
    query_files = sorted(root.glob("queries.*.tsv")) + sorted(root.glob("queries.*.tsv.gz"))
    if not query_files:
        raise DataError(root, "no queries.<split>.tsv next to collection.tsv")
    for qf in query_files:
        qtable.path = qf
        for no, cols in tsv_rows(qf, (2,)):
            if no == 1 and is_header(cols) and cols[1].lower() in ("text", "query"):
                continue
            qid, text = cols
            if qid in qtable.seen and qtexts[qids.index(qid)] == text:
                continue  # the same query listed in two split files
            qtable.add(no, qid)
            if not text.strip():
                raise DataError(qf, "empty text", line=no, field="text")
            qids.append(qid), qtexts.append(text)
    qset, tset = set(qids), set(ids)
    qrels: dict = {}
    for rf in sorted(root.glob("qrels.*.tsv")) + sorted(root.glob("qrels.*.tsv.gz")):
        split = qrels.setdefault(_split(rf, "qrels"), {})
        for no, cols in tsv_rows(rf, (2, 3, 4)):
            if no == 1 and is_header(cols):
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
