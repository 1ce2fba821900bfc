"""`negminer audit` on real data: is each pipeline's loss an unbiased estimate of the full softmax?

Static tower on gcide-rd (84,478 targets), batch 64, 8 negatives, lr 0.01, the audit taken after 20 training
steps; one `negminer audit` process per row (its exact command in the JSON). Columns: z_ratio +- its standard
error (1 when unbiased), the tail index of the Z_hat / Z samples (above 1/2: heavy-tailed, the standard error
understates the error), within 3 SE, zgrad_t, grad_rel_bias, seconds.

    python benchmarks/audit.py                 # every row (~8 min on 2 cores)
    python benchmarks/audit.py --only uniform  # some rows, merged into results/audit.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SHARED_DATA, merge_rerun, provenance, write_result  # noqa: E402

from negminer.fileio import atomic_write_text  # noqa: E402

BASE = ["--encoder", "static", "--batch-size", "64", "--num-negatives", "8", "--lr", "0.01", "--max-length", "32",
        "--at-step", "20", "--seed", "0", "--quiet"]
ROWS = [
    ("cache", ["--negatives", "cache"]),
    ("exact (R=10)", ["--negatives", "exact", "--refresh-every", "10"]),
    ("tree", ["--negatives", "tree"]),
    ("tree proposal", ["--negatives", "tree", "--tree-mode", "proposal"]),
    ("tree proposal, shared", ["--negatives", "tree", "--tree-mode", "proposal", "--share-negatives"]),
    ("tree descend", ["--negatives", "tree", "--tree-mode", "descend"]),
    ("tree descend, shared", ["--negatives", "tree", "--tree-mode", "descend", "--share-negatives"]),
    ("tree descend, 400 draws", ["--negatives", "tree", "--tree-mode", "descend", "--draws", "400"]),
    ("tree descend, beam 32", ["--negatives", "tree", "--tree-mode", "descend", "--tree-beam", "32"]),
    ("cache, margin 0.1", ["--negatives", "cache", "--margin", "0.1"]),
    ("cache, shared", ["--negatives", "cache", "--share-negatives"]),
    ("cache, NGAME (C=16)", ["--negatives", "cache", "--batching", "ngame", "--ngame-cluster-size", "16"]),
    ("cache, accumulation 4", ["--negatives", "cache", "--memory", "accumulation", "--accumulation", "4"]),
    ("cache, GradCache", ["--negatives", "cache", "--memory", "gradcache", "--chunk-size", "16"]),
    ("cache, shared, NGAME, accumulation 2", ["--negatives", "cache", "--share-negatives", "--batching", "ngame",
                                             "--ngame-cluster-size", "16", "--memory", "accumulation",
                                             "--accumulation", "2"]),
    ("cache 1% + nystrom", ["--negatives", "cache", "--refresh-fraction", "0.01", "--refresh", "auto,nystrom",
                            "--nystrom-every", "10"]),
    ("uniform", ["--negatives", "uniform"]),
    ("uniform, 400 draws", ["--negatives", "uniform", "--draws", "400"]),
    ("cache-stream (8192)", ["--negatives", "cache-stream", "--cache-size", "8192"]),
    ("cache-stream (8192), 800 draws", ["--negatives", "cache-stream", "--cache-size", "8192", "--draws", "800"]),
]
KEYS = ("z_ratio", "z_ratio_se", "z_tail_index", "heavy_tail", "within_3_se", "zgrad_t", "grad_rel_bias",
        "grad_rel_bias_se", "z_coverage", "draws", "instances")


def run(name: str, extra: list[str], data: Path) -> dict:
    argv = [sys.executable, "-m", "negminer", "audit", "--data", str(data), *BASE, *extra]
    t0 = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{name}: negminer audit exited {p.returncode}: {p.stderr.strip()[-500:]}")
    r = json.loads(p.stdout)
    return {"method": name, "options": extra, **{k: r.get(k) for k in KEYS}, "note": r.get("note"),
            "seconds": round(time.perf_counter() - t0, 1),
            **provenance(["benchmarks/audit.py", "--only", name]),
            "audit_command": "negminer audit " + shlex.join(["--data", "../shared/data/gcide-rd", *BASE, *extra])}


def fmt(x, f=".3f"):
    return "-" if x is None else format(x, f)


def table(rows: list[dict]) -> str:
    out = ["| pipeline | z_ratio | SE | tail index | within 3 SE | zgrad_t | grad_rel_bias | draws | seconds |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['method']} | {fmt(r['z_ratio'])} | {fmt(r['z_ratio_se'])} | {fmt(r['z_tail_index'], '.2f')} "
                   f"| {'yes' if r['within_3_se'] else 'no' + (' (heavy tail)' if r['heavy_tail'] else '')} "
                   f"| {fmt(r['zgrad_t'], '.2f')} | {fmt(r['grad_rel_bias'])} | {r['draws']} | {r['seconds']:.0f} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", help="rows by name")
    args = ap.parse_args()
    data = SHARED_DATA / "gcide-rd"
    if not data.exists():
        print(f"skipped: {data} not found (the shared/ folder beside the repo)")
        return 0
    todo = [(n, e) for n, e in ROWS if not args.only or n in args.only]
    rows = []
    for name, extra in todo:
        rows.append(run(name, extra, data))
        print(f"{name:40s} z_ratio {rows[-1]['z_ratio']:.3f} +- {rows[-1]['z_ratio_se']:.3f}  "
              f"tail {fmt(rows[-1]['z_tail_index'], '.2f')}  {rows[-1]['seconds']:.0f}s", flush=True)
    if args.only:
        rows = merge_rerun(rows, "audit")
    write_result("audit", {"rows": rows})
    md = table(rows)
    atomic_write_text(RESULTS / "audit.md", md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
