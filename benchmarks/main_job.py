"""The README's main job (``make train``: all-MiniLM-L6-v2 on builtin:pycode) and its figures.

Runs ``make train`` (the Makefile holds the one definition of the job) into a scratch run folder
and copies its metrics, with the commit and the command, to benchmarks/results/main_job.json.

    python benchmarks/main_job.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import provenance, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "main"
        subprocess.run(["make", "-C", str(ROOT), "train", f"RUN={run}"], check=True)
        metrics = json.loads((run / "metrics.json").read_text())
    out = write_result("main_job", {**provenance(), "command": "make train", "metrics": metrics,
                                    "data": "builtin:pycode", "encoder": "minilm"})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
