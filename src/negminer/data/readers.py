"""Line readers shared by the formats: UTF-8 checked per line, errors name file, line and field."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

from negminer.errors import DataError


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text without newline) for each non-blank line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    with _open(path) as f:
        for no, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(path, f"not valid UTF-8 (byte {e.start})", line=no) from None
            text = text.rstrip("\r\n")
            if no == 1:
                text = text.lstrip("\ufeff")
            if text.strip():
                yield no, text


def json_records(path: Path) -> Iterator[tuple[int, dict]]:
    for no, text in lines(path):
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(path, f"malformed JSON ({e.msg} at column {e.colno})", line=no) from None
        if not isinstance(rec, dict):
            raise DataError(path, "expected a JSON object", line=no)
        yield no, rec


def field(path: Path, no: int, rec: dict, name: str, *, required: bool = True, nonempty: bool = False):
    """A string field of a JSON record (ids may be numbers: they become strings)."""
    if name not in rec or rec[name] is None:
        if required:
            raise DataError(path, "missing", line=no, field=name)
        return ""
    v = rec[name]
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = str(v)
    if not isinstance(v, str):
        raise DataError(path, f"expected a string, got {type(v).__name__}", line=no, field=name)
    if nonempty and not v.strip():
        raise DataError(path, "empty text", line=no, field=name)
    return v


def tsv_rows(path: Path, ncols: tuple[int, ...]) -> Iterator[tuple[int, list[str]]]:
    for no, text in lines(path):
        cols = text.split("\t")
        if len(cols) not in ncols:
            want = " or ".join(map(str, ncols))
            raise DataError(path, f"expected {want} tab-separated columns, found {len(cols)}", line=no)
        yield no, cols


def grade(path: Path, no: int, value: str, name: str = "score") -> int:
    try:
        f = float(value)
    except ValueError:
        raise DataError(path, f"not a number: {value!r}", line=no, field=name) from None
    if not f.is_integer():
        raise DataError(path, f"not an integer grade: {value!r}", line=no, field=name)
    return int(f)


class IdTable:
    """Collects (id, payload) rows and rejects duplicate ids with both line numbers."""

    def __init__(self, path: Path, what: str):
        self.path, self.what, self.seen = path, what, {}

    def add(self, no: int, id_: str) -> None:
        if not id_.strip():
            raise DataError(self.path, f"empty {self.what} id", line=no)
        if id_ in self.seen:
            raise DataError(self.path, f"duplicate {self.what} id {id_!r} (first on line {self.seen[id_]})", line=no)
        self.seen[id_] = no
