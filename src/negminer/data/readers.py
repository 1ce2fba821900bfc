"""Line readers shared by the formats: UTF-8 checked per line, errors name file, line and field."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

from negminer.errors import DataError


def raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, bytes) of every line; ``.gz`` is decompressed. A file that cannot be read
    (truncated or corrupt ``.gz``, permissions) is a DataError naming the line reached."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    no = 0
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            for no, raw in enumerate(f, 1):
                yield no, raw
    except (EOFError, OSError, zlib.error) as e:
        why = f"{'zlib.error' if isinstance(e, zlib.error) else type(e).__name__}: {e}"
        if path.suffix == ".gz" and not isinstance(e, PermissionError):
            raise DataError(path, f"compressed file is truncated or corrupt ({why})", line=no + 1) from None
        raise DataError(path, f"cannot read ({why})", line=no + 1 if no else None) from None


def lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text without newline) for each non-blank line."""
    for no, raw in raw_lines(path):
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
        except RecursionError:
            raise DataError(path, "malformed JSON (nested too deeply)", line=no) from None
        except ValueError:  # Python's limit on the digits of an integer
            raise DataError(path, "malformed JSON (an integer of more than 4300 digits)", line=no) from None
        if not isinstance(rec, dict):
            raise DataError(path, "expected a JSON object", line=no)
        yield no, rec


def _kind(v) -> str:
    return type(v).__name__


def valid_unicode(path: Path, no: int | None, v: str, name: str) -> str:
    """``v``, unless it holds a lone surrogate (JSON's ``\\ud800`` escapes): it could never be encoded."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = f"\\u{ord(v[e.start]):04x}"
        raise DataError(path, f"lone UTF-16 surrogate {bad} in the text (invalid Unicode)", line=no,
                        field=name) from None
    return v


def text_value(path: Path, no: int | None, v, name: str) -> str:
    """Text rule: a JSON string, valid Unicode."""
    if not isinstance(v, str):
        raise DataError(path, f"expected a string, got {_kind(v)}", line=no, field=name)
    return valid_unicode(path, no, v, name)


def id_value(path: Path, no: int | None, v, name: str) -> str:
    """Id rule: a string, or an integer (its decimal string; BEIR sets with numeric ids exist)."""
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    if not isinstance(v, str):
        raise DataError(path, f"expected a string or an integer id, got {_kind(v)}", line=no, field=name)
    return valid_unicode(path, no, v, name)


def _present(path: Path, no: int, rec: dict, name: str, required: bool) -> bool:
    if name in rec and rec[name] is not None:
        return True
    if required:
        raise DataError(path, "missing", line=no, field=name)
    return False


def field(path: Path, no: int, rec: dict, name: str, *, required: bool = True, nonempty: bool = False) -> str:
    """A text field of a JSON record (text rule); missing or null gives "" unless ``required``."""
    v = text_value(path, no, rec[name], name) if _present(path, no, rec, name, required) else ""
    if nonempty and not v.strip():
        raise DataError(path, "empty text", line=no, field=name)
    return v


def id_field(path: Path, no: int, rec: dict, name: str, *, required: bool = True) -> str:
    """An id field of a JSON record (id rule); missing or null gives "" unless ``required``."""
    return id_value(path, no, rec[name], name) if _present(path, no, rec, name, required) else ""


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
