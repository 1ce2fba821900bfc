"""Large effective batches under a memory limit: peak memory and step time, and quality at equal compute.

Memory table: all-MiniLM-L6-v2, in-batch softmax on ../shared/data/gcide-rd (113,388 training pairs: a
batch of 4,096 fits), query/target max length 32, one optimiser step per row after the first (which pays
for loading and warm-up), each row in a fresh process so that its peak RSS (VmHWM) is its own. Rows:
plain at each batch size; at each effective batch with ``--chunk-size`` rows per chunk / micro-batch:
gradcache, accumulation (``--accumulation B/chunk``) and contaccum (the same, with a dual bank of B pairs).
Goal (#14): effective batch 4096 with gradcache at no more than 1.25x the peak memory of a plain batch of 64.

Quality table (``--quality``): the same number of training pairs for every row (``--epochs`` over
gcide-rd), the static tower with separate query and target towers (so that the towers' gradient-norm
ratio exists), in-batch softmax, lr 0.01, one seed: plain batches of the local size (32) and of the
effective size (256), accumulation (8 x 32), gradcache (256, chunks of 32), contaccum (8 x 32 with a dual
bank of 256 and 1,024 pairs, and the passage-only bank of 256). Each row: nDCG@10, recall@10 on the
12,658 test pairs, encodes, seconds, peak RSS, and the mean query/target gradient-norm ratio over the log.

    python benchmarks/memory.py                          # memory table, batches 64 256 1024 4096
    python benchmarks/memory.py --batches 64 4096 --chunk-size 64
    python benchmarks/memory.py --quality                # quality table only

Writes benchmarks/results/memory.json ("rows": memory table, "quality": quality table; a run replaces only
its own table) and memory.md (rows: method, effective_batch, peak_rss_mb, peak_cuda_mb when on a GPU,
step_seconds, commit, command).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from negminer.fileio import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SHARED_DATA, peak_rss_mb, provenance, reset_peak_rss, write_result  # noqa: E402


def one_row(method: str, batch: int, chunk: int, out: str) -> dict:
    """In this process: set up a trainer, take one step, then time one more."""
    import torch

    from negminer.config import resolve
    from negminer.train.trainer import Trainer

    opts = {"plain": {}, "gradcache": {"memory": "gradcache", "chunk_size": chunk},
            "accumulation": {"memory": "accumulation", "accumulation": max(1, batch // chunk)},
            "contaccum": {"memory": "contaccum", "accumulation": max(1, batch // chunk), "bank_size": batch}}[method]
    cfg = resolve(dict(data=str(SHARED_DATA / "gcide-rd"), out=out, encoder="minilm", batch_size=batch, steps=2, quiet=True,
                       zero_shot=False, query_max_length=32, target_max_length=32, lr=1e-5, **opts))
    tr = Trainer(cfg)
    tr.setup_sampler()
    tr.model.train()
    tr.train_step(0)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    tr.train_step(1)
    sec = time.perf_counter() - t
    return {"method": method, "effective_batch": batch, "chunk_size": chunk if method != "plain" else None,
            "peak_rss_mb": peak_rss_mb(), "step_seconds": round(sec, 2),
            "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None}


def table(rows) -> str:
    base = next((r["peak_rss_mb"] for r in rows if r["method"] == "plain" and r["effective_batch"] == 64), None)
    head = "| method | effective batch | chunk / micro-batch | peak RSS MB | x plain 64 | step s |"
    out = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        ratio = f"{r['peak_rss_mb'] / base:.2f}" if base and r.get("peak_rss_mb") else "-"
        out.append(f"| {r['method']} | {r['effective_batch']} | {r['chunk_size'] or '-'} | "
                   f"{r.get('peak_rss_mb', '-')} | {ratio} | {r.get('step_seconds', '-')} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", nargs="*", type=int, default=[64, 256, 1024, 4096])
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--plain-max", type=int, default=1024, help="largest plain batch tried (memory grows with it)")
    ap.add_argument("--methods", nargs="*", default=["plain", "gradcache", "accumulation", "contaccum"])
    ap.add_argument("--quality", action="store_true", help="the quality table instead of the memory table")
    ap.add_argument("--epochs", type=float, default=1.0, help="quality: training pairs seen, in epochs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="quality: rerun the rows whose method starts with these words")
    ap.add_argument("--row", nargs=3, metavar=("METHOD", "BATCH", "CHUNK"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.row:  # child process: one measurement, as JSON on stdout
        reset_peak_rss()
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(one_row(args.row[0], int(args.row[1]), int(args.row[2]), tmp)))
        return 0
    if args.quality:
        rows = quality(args)
        if rows:
            if args.only:
                old = json.loads((RESULTS / "memory.json").read_text()).get("quality", [])
                new = {r["method"]: r for r in rows}
                rows = [new.pop(r["method"], r) for r in old] + list(new.values())
            save(quality=rows)
            print("\n" + quality_table(rows))
        return 0
    if not (SHARED_DATA / "gcide-rd").exists():
        print(f"skipped: {SHARED_DATA / 'gcide-rd'} not found (the shared/ folder beside the repo)")
        return 0
    prov, rows = provenance(), []
    plan = [("plain", b) for b in args.batches if b <= args.plain_max and "plain" in args.methods] + [
        (m, b) for m in args.methods for b in args.batches if m != "plain"]
    for method, b in plan:
        p = subprocess.run([sys.executable, __file__, "--row", method, str(b), str(args.chunk_size)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            rows.append({"method": method, "effective_batch": b, "chunk_size": args.chunk_size, "error":
                         p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}", **prov})
        else:
            rows.append({**json.loads(p.stdout.strip().splitlines()[-1]), **prov})
        print(table([rows[-1]]).splitlines()[2], flush=True)
    jf = RESULTS / "memory.json"
    if jf.exists():  # rows of methods or batches not rerun stay, in their order
        new = {(r["method"], r["effective_batch"]): r for r in rows}
        rows = [new.pop((r["method"], r["effective_batch"]), r) for r in json.loads(jf.read_text()).get("rows", [])]
        rows += list(new.values())
    save(rows=rows)
    print("\n" + table(rows))
    return 0


def save(**part) -> None:
    """Replace one table of results/memory.json (and memory.md), keeping the other."""
    jf = RESULTS / "memory.json"
    old = json.loads(jf.read_text()) if jf.exists() else {}
    both = {"rows": old.get("rows", []), "quality": old.get("quality", []), **part}
    write_result("memory", both)
    md = "## Peak memory and step time\n\n" + table(both["rows"]) + "\n"
    if both["quality"]:
        md += "\n## Quality at equal compute\n\n" + quality_table(both["quality"]) + "\n"
    atomic_write_text(RESULTS / "memory.md", md)


QUALITY_BASE = dict(encoder="static", shared=False, lr=0.01, query_max_length=32, target_max_length=32, quiet=True,
                    zero_shot=False, eval_batch_size=512, log_every=20)
QUALITY = [("plain 32", 32, {}), ("plain 256", 256, {}),
           ("accumulation 8x32", 256, {"memory": "accumulation", "accumulation": 8}),
           ("gradcache 256 (chunk 32)", 256, {"memory": "gradcache", "chunk_size": 32}),
           ("contaccum 8x32, bank 256", 256, {"memory": "contaccum", "accumulation": 8, "bank_size": 256}),
           ("contaccum 8x32, passage bank 256", 256, {"memory": "contaccum", "accumulation": 8, "bank_size": 256,
                                                      "bank": "passage"}),
           ("contaccum 8x32, bank 1024", 256, {"memory": "contaccum", "accumulation": 8, "bank_size": 1024})]


def quality(args) -> list[dict]:
    from negminer.config import resolve
    from negminer.train.trainer import Trainer
    from negminer.fileio import read_jsonl
    from common import shared_dataset

    ds = shared_dataset("gcide-rd")
    if ds is None:
        return []
    prov, rows = provenance(), []
    pairs = sum(len(v) for v in ds.positives("train").values())
    with tempfile.TemporaryDirectory() as tmp:
        for name, batch, opts in QUALITY:
            if args.only and not any(name.startswith(w) for w in args.only):
                continue
            steps = max(1, int(args.epochs * pairs) // batch)
            out = Path(tmp) / str(len(rows))
            cfg = resolve({"data": "", "out": str(out), "steps": steps, "batch_size": batch, "seed": args.seed,
                           **QUALITY_BASE, **opts})
            reset_peak_rss()
            m = Trainer(cfg, dataset=ds).run()
            t = m["train"]
            ratios = [r["grad_norm_ratio"] for r in read_jsonl(out / "train_log.jsonl") if "grad_norm_ratio" in r]
            rows.append({"method": name, "effective_batch": batch, "steps": steps, "options": opts,
                         "ndcg@10": round(m["ndcg@10"], 4), "recall@10": round(m["recall@10"], 4),
                         "query_encodes": t["query_encodes"], "target_encodes": t["target_encodes"],
                         "seconds": t["seconds"], "peak_rss_mb": peak_rss_mb(),
                         "grad_norm_ratio": round(sum(ratios) / len(ratios), 4) if ratios else None, **prov})
            print(quality_table([rows[-1]]).splitlines()[2], flush=True)
    return rows


def quality_table(rows) -> str:
    head = ("| method | effective batch | steps | nDCG@10 | recall@10 | query encodes | target encodes | seconds | "
            "peak RSS MB | query/target grad norm |")
    out = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        g = f"{r['grad_norm_ratio']:.3f}" if r.get("grad_norm_ratio") is not None else "-"
        out.append(f"| {r['method']} | {r['effective_batch']} | {r['steps']} | {r['ndcg@10']:.4f} | "
                   f"{r['recall@10']:.4f} | {r['query_encodes']:,} | {r['target_encodes']:,} | {r['seconds']:.0f} | "
                   f"{r['peak_rss_mb']:.0f} | {g} |")
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
