"""TREC run files: one line per retrieved target, ``qid Q0 docid rank score tag``.

    write_run("out/run.trec", {"q1": [("d1", 0.5), ("d3", 0.9)]})   # ranked as trec_eval ranks
    read_run("out/run.trec") == {"q1": [("d3", 0.9), ("d1", 0.5)]}  # the same floats, best first
"""

from __future__ import annotations

from pathlib import Path

from negminer.errors import DataError
from negminer.eval.metrics import trec_order
from negminer.fileio import atomic_write_text


def write_run(path, run: dict[str, list[tuple[str, float]]], tag: str = "negminer") -> None:
    """Write each query's targets in trec_eval's order (``trec_order``; rank = position there),
    scores as ``repr(float)``, which reads back as the same float. Ids must not contain whitespace."""
    lines = [f"{q} Q0 {t} {r} {float(s)!r} {tag}\n"
             for q, ranked in run.items() for r, (t, s) in enumerate(trec_order(ranked), 1)]
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
