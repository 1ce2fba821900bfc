"""Extreme Classification Repository layouts (http://manikvarma.org/downloads/XC/XMLRepository.html).

A folder in one of these layouts, tried in this order (every file may also be ``.gz``):

* label features as JSON (LF-AmazonTitles-131K, LF-WikiSeeAlso-320K, ...): ``trn.json``, ``tst.json``
  (one object per line: ``uid``, ``title``, optional ``content``, ``target_ind`` label rows, optional
  ``target_rel`` values) and ``lbl.json`` (``uid``, ``title``, optional ``content``; record i is label i).
* label matrices ``trn_X_Y.txt`` / ``tst_X_Y.txt`` (header ``rows labels``, then per row ``label:value``
  pairs, an empty line for none; or ``Y.trn.npz`` / ``Y.tst.npz``, scipy sparse, as DEXML prepares them) with, per split, raw text ``raw/trn_X.txt`` (or ``trn_X.txt``; line i is
  row i) and ``raw/Y.txt`` (or ``Y.txt``), else bag of words ``trn_X_Xf.txt`` (header ``rows features``,
  then ``feature:value`` pairs) with optional ``Y.txt`` label texts and ``Xf.txt`` feature names. A text
  file whose first line is ``uid->text`` has that form on every line: the uid becomes the row's id.
* the original one file per split, ``train.txt`` / ``test.txt``: header ``points features labels``, then
  ``l1,l2,... f:v f:v ...`` per point (optional ``Y.txt`` / ``Xf.txt`` as above).

In any layout, ``filter_labels_{train,trn,test,tst}.txt`` lines ``row label`` are the reciprocal pairs XMC
evaluation removes from predictions and ground truth: they go to ``Dataset.filter_pairs``.

Splits are ``train`` (trn) and ``test`` (tst); every row of a split is in ``qrels[split]`` (``{}`` when it has
no label: the repository's metrics count every test point). Query ids are the uid when the format gives one,
else ``trn<i>`` / ``tst<i>``; label ids the uid, else the label's row number; a repeated uid gets
``~<row id>`` appended. Grade 1, or the value given rounded to an int >= 1 when > 0 (0 otherwise);
a negative or non-finite label value is an error. Uids are strings or integers; titles, content strings.
A query's text is ``title content``; a label has title ``title`` and text ``content`` (text ``title`` when it
has no content, ``label <i>`` when empty). The towers read text, so a bag-of-words row becomes text: the
``Xf.txt`` names of its nonzero features by decreasing value (equal values by feature index), or tokens
``f<index>`` without ``Xf.txt``; a label is its ``Y.txt`` line, or ``label <index>``. Text files that are
not UTF-8 are read as Latin-1, line by line (the repository's tools write Latin-1).
"""

from __future__ import annotations

import math
import re
import zipfile
import zlib
from itertools import zip_longest
from pathlib import Path

import numpy as np

from negminer.data.dataset import Dataset
from negminer.data.readers import field, id_field, json_records, lines, raw_lines
from negminer.errors import DataError

SPLITS = (("trn", "train"), ("tst", "test"))
FILTERS = {"train": ("filter_labels_train.txt", "filter_labels_trn.txt"),
           "test": ("filter_labels_test.txt", "filter_labels_tst.txt")}
UID = re.compile(r"(\S+?)->(.*)", re.S)


def _find(root: Path, *names: str) -> Path | None:
    for name in names:
        for p in (root / name, root / f"{name}.gz"):
            if p.is_file():
                return p
    return None


def _all_lines(path: Path, latin1: bool = False):
    """(line number, text) for every line, blank ones included (a blank line is an empty row)."""
    for no, raw in raw_lines(path):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            if not latin1:
                raise DataError(path, f"not valid UTF-8 (byte {e.start})", line=no) from None
            text = raw.decode("latin-1")
        text = text.rstrip("\r\n")
        yield no, text.lstrip("\ufeff") if no == 1 else text


def _counted(path: Path, rows, n: int, against: str):
    """Exactly ``n`` of ``rows``; blank lines after them are ignored, anything else is an error."""
    k = last = 0
    for no, text in rows:
        last = no
        if k == n:
            if text.strip():
                raise DataError(path, f"more rows than the {n} of {against}", line=no, field="num_rows")
            continue
        k += 1
        yield no, text
    if k < n:
        raise DataError(path, f"{k} rows, but {against} says {n}", line=max(last, 1), field="num_rows")


def _header(path: Path, text: str | None, names: tuple[str, ...]) -> list[int]:
    cols = (text or "").split()
    if len(cols) != len(names) or not all(c.isascii() and c.isdigit() for c in cols):
        found = "an empty file" if text is None else repr(text)
        raise DataError(path, f"expected a header '{' '.join(names)}', found {found}", line=1, field="header")
    return [int(c) for c in cols]


def _pairs(path: Path, no: int, tokens, size: int, what: str) -> list[tuple[int, float]]:
    out = []
    for tok in tokens:
        idx, sep, val = tok.partition(":")
        if not sep or not (idx.isascii() and idx.isdigit()):
            raise DataError(path, f"malformed '{what}:value' pair {tok!r}", line=no, field=what)
        try:
            v = float(val)
        except ValueError:
            v = math.nan
        if not math.isfinite(v):
            raise DataError(path, f"not a number: {val!r} in {tok!r}", line=no, field=what)
        if v < 0 and what == "label":
            raise DataError(path, f"negative value in {tok!r} (label values must be >= 0)", line=no, field=what)
        out.append((_index(path, no, int(idx), size, what), v))
    return out


def _index(path: Path, no: int, i: int, size: int, what: str, name: str | None = None) -> int:
    if not 0 <= i < size:
        raise DataError(path, f"{what} index {i} out of range (there are {size} {what}s)", line=no,
                        field=name or what)
    return i


def _sparse(path: Path, what: str):
    """Yields the header's (rows, columns), then (line, [(index, value), ...]) for each row."""
    rows = _all_lines(path)
    first = next(rows, (1, None))[1]
    n, size = _header(path, first, ("num_rows", f"num_{what}s"))
    yield n, size
    for no, text in _counted(path, rows, n, f"the header of {path.name}"):
        yield no, _pairs(path, no, text.split(), size, what)


def _sparse_npz(path: Path):
    """The same from a scipy sparse matrix saved with ``save_npz`` (``Y.trn.npz``, as DEXML prepares data)."""
    try:
        import scipy.sparse as sp
    except ImportError:
        raise DataError(path, "reading .npz label matrices needs scipy (pip install scipy)") from None
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":  # np.load would try it as a pickle
                raise ValueError("an .npz file is a zip archive, this is not one")
        m = sp.load_npz(path).tocsr()
        data = np.asarray(m.data, dtype=np.float64)
    except (zipfile.BadZipFile, EOFError, zlib.error) as e:
        why = f"{'zlib.error' if isinstance(e, zlib.error) else type(e).__name__}: {e}"
        raise DataError(path, f"compressed file is truncated or corrupt ({why})") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file
        raise DataError(path, f"not a scipy sparse matrix ({type(e).__name__}: {e})") from None
    bad = np.flatnonzero(~np.isfinite(data) | (data < 0))
    if len(bad):  # the first in row order
        k = int(bad[0])
        r, c = int(np.searchsorted(m.indptr, k, side="right")) - 1, int(m.indices[k])
        raise DataError(path, f"value {data[k]} at row {r}, column {c} (0-based): label values must be finite "
                              "and >= 0")
    yield m.shape
    for i in range(m.shape[0]):
        a, z = m.indptr[i], m.indptr[i + 1]
        yield i + 1, list(zip(m.indices[a:z].tolist(), m.data[a:z].tolist()))


def _label_matrix(root: Path, short: str):
    """(path, rows) of a split's label matrix: ``trn_X_Y.txt``, else ``Y.trn.npz``; None when absent."""
    p = _find(root, f"{short}_X_Y.txt")
    if p is not None:
        return p, _sparse(p, "label")
    p = root / f"Y.{short}.npz"
    return (p, _sparse_npz(p)) if p.is_file() else None


def _grade(v: float) -> int:
    return max(1, round(v)) if v > 0 else 0


def _bow_text(pairs, names: list[str] | None) -> str:
    ranked = sorted((p for p in pairs if p[1] != 0), key=lambda p: (-p[1], p[0]))
    return " ".join(names[i] if names is not None else f"f{i}" for i, _ in ranked)


def _texts(path: Path, n: int, against: str):
    """(line, uid or "", text) for the ``n`` lines of a raw text file (``uid->text`` if line 1 is)."""
    with_uid = None
    for no, text in _counted(path, _all_lines(path, latin1=True), n, against):
        m = UID.fullmatch(text)
        with_uid = bool(m) if with_uid is None else with_uid
        if with_uid and not m:
            raise DataError(path, "expected 'uid->text' (as on line 1)", line=no, field="uid")
        yield (no, m.group(1), m.group(2)) if with_uid else (no, "", text)


class _Build:
    """Collects labels, then queries split by split, making ids unique."""

    def __init__(self):
        self.tids, self.titles, self.ttexts, self.qids, self.qtexts = [], [], [], [], []
        self.qrels: dict[str, dict[str, dict[str, int]]] = {}
        self.rows: dict[str, list[str]] = {}  # split -> query id of each row
        self.seen_t, self.seen_q = set(), set()

    @staticmethod
    def _unique(uid: str, fallback: str, seen: set) -> str:
        i = uid if uid.strip() else fallback
        while i in seen:
            i = f"{i}~{fallback}"
        seen.add(i)
        return i

    def label(self, uid: str, title: str, text: str) -> None:
        i = len(self.tids)
        self.tids.append(self._unique(uid, str(i), self.seen_t))
        if not text.strip():
            title, text = "", title if title.strip() else f"label {i}"
        self.titles.append(title), self.ttexts.append(text)

    def labels(self, texts: Path | None, n: int, against: str) -> None:
        """``n`` labels: the lines of ``texts`` (``Y.txt``), or ``label <i>`` without it."""
        for _, uid, text in _texts(texts, n, against) if texts else ((0, "", "") for _ in range(n)):
            self.label(uid, "", text)

    def query(self, split: str, uid: str, text: str, judged: dict[str, int]) -> None:
        rows = self.rows.setdefault(split, [])
        qid = self._unique(uid, f"{'trn' if split == 'train' else 'tst'}{len(rows)}", self.seen_q)
        rows.append(qid), self.qids.append(qid), self.qtexts.append(text)
        self.qrels.setdefault(split, {})[qid] = judged

    def judged(self, pairs) -> dict[str, int]:
        out: dict[str, int] = {}
        for i, v in pairs:
            out[self.tids[i]] = max(_grade(v), out.get(self.tids[i], 0))
        return out


def _read_json(root: Path, b: _Build) -> None:
    lbl = _find(root, "lbl.json")
    if lbl is None:
        raise DataError(root / "lbl.json.gz", "file not found (label-feature layout: trn.json.gz, tst.json.gz, "
                                              "lbl.json.gz)")
    for no, rec in json_records(lbl):
        b.label(id_field(lbl, no, rec, "uid", required=False), field(lbl, no, rec, "title"),
                field(lbl, no, rec, "content", required=False))
    files = [(split, _find(root, f"{short}.json")) for short, split in SPLITS]
    if not any(p for _, p in files):
        raise DataError(root / "trn.json.gz", "file not found (nor tst.json.gz): no split to read")
    for split, path in files:
        for no, rec in json_records(path) if path else ():
            ind, rel = rec.get("target_ind"), rec.get("target_rel")
            if not isinstance(ind, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ind):
                raise DataError(path, "missing" if ind is None else "expected a list of label indices", line=no,
                                field="target_ind")
            if rel is None:
                rel = [1] * len(ind)
            elif not (isinstance(rel, list) and len(rel) == len(ind) and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in rel)):
                raise DataError(path, f"expected {len(ind)} numbers, one per target_ind", line=no, field="target_rel")
            elif any(v < 0 for v in rel):
                raise DataError(path, f"negative value {min(rel)} (label values must be >= 0)", line=no,
                                field="target_rel")
            pairs = [(_index(path, no, i, len(b.tids), "label", "target_ind"), v) for i, v in zip(ind, rel)]
            title, content = field(path, no, rec, "title"), field(path, no, rec, "content", required=False)
            b.query(split, id_field(path, no, rec, "uid", required=False), f"{title} {content}".strip(),
                    b.judged(pairs))


def _read_matrix(root: Path, b: _Build) -> None:
    """Label matrices with raw text or bag-of-words inputs."""
    found = {short: (split, m) for short, split in SPLITS if (m := _label_matrix(root, short))}
    splits = [(short, split, m[0]) for short, (split, m) in found.items()]
    matrices = {short: m[1] for short, (_, m) in found.items()}
    heads = {short: next(m) for short, m in matrices.items()}
    n_labels = heads[splits[0][0]][1]
    for short, _, p in splits[1:]:
        if heads[short][1] != n_labels:
            raise DataError(p, f"{heads[short][1]} labels, but {splits[0][2].name} has {n_labels}", line=1,
                            field="num_labels")
    raw = {short: _find(root, f"raw/{short}_X.txt", f"{short}_X.txt") for short, _, _ in splits}
    y = _find(root, "raw/Y.txt", "Y.txt")
    if y is None and any(raw.values()):
        raise DataError(root / "raw" / "Y.txt", "file not found (the label texts for raw/trn_X.txt, raw/tst_X.txt)")
    b.labels(y, n_labels, f"the header of {splits[0][2].name}")
    names, n_features = None, None
    for short, split, p in splits:
        n_rows = heads[short][0]
        if raw[short]:
            inputs = _texts(raw[short], n_rows, f"{p.name}'s header")
        else:
            xf = _find(root, f"{short}_X_Xf.txt")
            if xf is None:
                raise DataError(root / "raw" / f"{short}_X.txt", f"file not found (nor {short}_X.txt, "
                                                                   f"{short}_X_Xf.txt): no inputs for {p.name}")
            bow = _sparse(xf, "feature")
            rows, size = next(bow)
            if rows != n_rows:
                raise DataError(xf, f"{rows} rows, but {p.name} has {n_rows}", line=1, field="num_rows")
            if n_features is None:
                n_features, names = size, _feature_names(root, size)
            elif size != n_features:
                raise DataError(xf, f"{size} features, but the other split has {n_features}", line=1,
                                field="num_features")
            inputs = ((no, "", _bow_text(pairs, names)) for no, pairs in bow)
        for (_, pairs), (_, uid, text) in zip_longest(matrices[short], inputs):  # each checks its count
            b.query(split, uid, text, b.judged(pairs))


def _feature_names(root: Path, size: int) -> list[str] | None:
    xf = _find(root, "Xf.txt")
    if xf is None:
        return None
    return [t.strip() for _, t in _counted(xf, _all_lines(xf, latin1=True), size, "the bag-of-words header")]


def _classic_header(path: Path) -> bool:
    try:
        first = next(_all_lines(path), (1, ""))[1].split()
    except (DataError, OSError, EOFError):  # not UTF-8, not gzip: not this layout
        return False
    return len(first) == 3 and all(c.isascii() and c.isdigit() for c in first)


def _read_classic(root: Path, b: _Build) -> None:
    """``train.txt`` / ``test.txt``: ``points features labels`` header, ``l1,l2 f:v f:v`` rows."""
    files = [(split, p) for split, name in (("train", "train.txt"), ("test", "test.txt")) if (p := _find(root, name))]
    shape = None
    for split, path in files:
        rows = _all_lines(path)
        n, n_features, n_labels = _header(path, next(rows, (1, None))[1], ("num_points", "num_features", "num_labels"))
        if shape is None:
            shape = (n_features, n_labels)
            b.labels(_find(root, "Y.txt"), n_labels, f"the header of {path.name}")
            names = _feature_names(root, n_features)
        elif (n_features, n_labels) != shape:
            raise DataError(path, f"{n_features} features and {n_labels} labels, but {files[0][1].name} has "
                                  f"{shape[0]} and {shape[1]}", line=1, field="header")
        for no, text in _counted(path, rows, n, f"the header of {path.name}"):
            tokens = text.split()
            labels = tokens.pop(0) if tokens and ":" not in tokens[0] else ""
            try:
                ind = [int(x) for x in labels.split(",") if x]
            except ValueError:
                raise DataError(path, f"malformed label list {labels!r}", line=no, field="label") from None
            pairs = [(_index(path, no, i, n_labels, "label"), 1.0) for i in ind]
            b.query(split, "", _bow_text(_pairs(path, no, tokens, n_features, "feature"), names), b.judged(pairs))


def _read_filters(root: Path, b: _Build) -> dict[str, set[tuple[str, str]]]:
    out: dict[str, set[tuple[str, str]]] = {}
    for split, names in FILTERS.items():
        for path in filter(None, (_find(root, n) for n in names)):
            rows = b.rows.get(split)
            if rows is None:
                raise DataError(path, f"no {split} split to apply it to")
            pairs = out.setdefault(split, set())
            for no, text in lines(path):
                try:
                    r, t = (float(c) for c in text.split())
                except ValueError:
                    r = t = math.nan
                if not (r.is_integer() and t.is_integer()):
                    raise DataError(path, f"expected 'row label' (two integers), found {text!r}", line=no,
                                    field="row")
                qid = rows[_index(path, no, int(r), len(rows), "row")]
                pairs.add((qid, b.tids[_index(path, no, int(t), len(b.tids), "label")]))
    return out


def xmc_layout(root: Path) -> str | None:
    """``json``, ``matrix`` or ``classic`` for a folder in one of the repository's layouts, else None."""
    root = Path(root)
    if not root.is_dir():
        return None
    if _find(root, "lbl.json", "trn.json", "tst.json"):
        return "json"
    if _find(root, "trn_X_Y.txt", "tst_X_Y.txt") or (root / "Y.trn.npz").is_file() or (root / "Y.tst.npz").is_file():
        return "matrix"
    if any(p and _classic_header(p) for p in (_find(root, "train.txt"), _find(root, "test.txt"))):
        return "classic"
    return None


def is_xmc(root: Path) -> bool:
    return xmc_layout(root) is not None


def load_xmc(root: str | Path, name: str | None = None) -> Dataset:
    root = Path(root)
    layout = xmc_layout(root)
    if layout is None:
        raise DataError(root, "no Extreme Classification Repository files (lbl.json.gz, trn_X_Y.txt, train.txt)")
    b = _Build()
    {"json": _read_json, "matrix": _read_matrix, "classic": _read_classic}[layout](root, b)
    filters = _read_filters(root, b)
    return Dataset(name or root.name, b.tids, b.ttexts, b.titles, b.qids, b.qtexts, b.qrels, source=str(root),
                   filter_pairs=filters, xmc=True)
