"""TREC run files: one line per retrieved target, ``qid Q0 docid rank score tag``.

    write_run("out/run.trec", {"q1": [("d3", 0.9), ("d1", 0.5)]})   # rank = position, 1-based
    read_run("out/run.trec") == {"q1": [("d3", 0.9), ("d1", 0.5)]}  # scores to 6 decimals
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from negminer.errors import DataError


def atomic_write_text(path, text: str) -> None:
    """Write to a temp file beside ``path``, then os.replace: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_run(path, run: dict[str, list[tuple[str, float]]], tag: str = "negminer") -> None:
    """``run[qid]`` is ranked best first; ids must not contain whitespace."""
    lines = [f"{q} Q0 {t} {r} {s:.6f} {tag}\n" for q, ranked in run.items() for r, (t, s) in enumerate(ranked, 1)]
    atomic_write_text(path, "".join(lines))


def read_run(path) -> dict[str, list[tuple[str, float]]]:
    """Read a run back, each query's targets ordered by rank (file order for equal ranks)."""
    rows: dict[str, list[tuple[int, int, str, float]]] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(path, f"cannot read run file ({e.strerror or e})") from None
    for no, line in enumerate(text.splitlines(), 1):
        cols = line.split()
        if not cols:
            continue
        if len(cols) != 6:
            raise DataError(path, f"expected 6 columns 'qid Q0 docid rank score tag', found {len(cols)}", line=no)
        try:
            rank, score = int(cols[3]), float(cols[4])
        except ValueError:
            raise DataError(path, f"rank {cols[3]!r} / score {cols[4]!r} is not a number", line=no) from None
        rows.setdefault(cols[0], []).append((rank, no, cols[2], score))
    return {q: [(t, s) for _, _, t, s in sorted(r)] for q, r in rows.items()}
