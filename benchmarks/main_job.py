"""The README's main job (``make train``: all-MiniLM-L6-v2 on builtin:pycode) and its figures.

Runs ``make train`` (the Makefile holds the one definition of the job: in-batch negatives and the
recommended cache step, the same seconds of training each) into a scratch run folder and copies both
runs' metrics and their paired comparison, with the commit and the command, to
benchmarks/results/main_job.json.

    python benchmarks/main_job.py [--budget 150]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import provenance, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, help="seconds of training per run (default: the Makefile's BUDGET)")
    args = ap.parse_args()
    extra = [f"BUDGET={args.budget:g}"] if args.budget else []
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "main"
        subprocess.run(["make", "-C", str(ROOT), "train", f"RUN={run}", *extra], check=True)
        runs = {name: json.loads((run / name / "metrics.json").read_text()) for name in ("inbatch", "cache")}
        paired = json.loads(subprocess.run([str(ROOT / ".venv" / "bin" / "negminer"), "compare", str(run / "inbatch"),
                                            str(run / "cache"), "--json"], check=True, capture_output=True,
                                           text=True).stdout)
    for r in paired:
        r["a"], r["b"] = "inbatch", "cache"
    out = write_result("main_job", {**provenance(), "command": "make train " + " ".join(extra), "runs": runs,
                                    "paired": paired, "data": "builtin:pycode", "encoder": "minilm"})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
