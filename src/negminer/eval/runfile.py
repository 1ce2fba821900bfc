"""TREC run files: ``qid Q0 docid rank score tag``, written atomically."""

from __future__ import annotations

from pathlib import Path

from negminer.errors import DataError
from negminer.train.io import atomic_write_text


def write_run(path, run: dict[str, list[tuple[str, float]]], tag: str = "negminer") -> None:
    lines = [f"{q} Q0 {t} {r} {s:.6f} {tag}\n" for q, ranked in run.items() for r, (t, s) in enumerate(ranked, 1)]
    atomic_write_text(path, "".join(lines))


def read_run(path) -> dict[str, list[tuple[str, float]]]:
    run: dict = {}
    for no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        cols = line.split()
        if not cols:
            continue
        if len(cols) != 6:
            raise DataError(path, f"expected 6 columns, found {len(cols)}", line=no)
        run.setdefault(cols[0], []).append((cols[2], float(cols[4])))
    return run
