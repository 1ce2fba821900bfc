"""Sanity check of the evaluation: zero-shot all-MiniLM-L6-v2 on BEIR SciFact test.

MTEB reports nDCG@10 = 0.645 (title + " " + text, max_seq_length 256, cosine). negminer's
evaluation with its own MiniLM tower must land there.

    python benchmarks/zeroshot.py [--data ../shared/data/scifact] [--max-length 256]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, write_result  # noqa: E402

MTEB_NDCG10 = 0.645


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(SHARED_DATA / "scifact"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-length", type=int, default=256)
    args = ap.parse_args(argv)
    if not Path(args.data).exists():
        print(f"skipped: {args.data} not found (the shared/ folder beside the repo)")
        return 0
    from negminer.data import load_dataset
    from negminer.encoders import build_encoder
    from negminer.eval.evaluate import evaluate, format_metrics

    ds = load_dataset(args.data)
    model = build_encoder("minilm", query_max_length=args.max_length, target_max_length=args.max_length)
    t = time.perf_counter()
    m = evaluate(model, ds, split=args.split, batch_size=64, progress=True)
    secs = time.perf_counter() - t
    print(format_metrics(m))
    print(f"\nnDCG@10 {m['ndcg@10']:.4f} vs MTEB {MTEB_NDCG10} (difference {m['ndcg@10'] - MTEB_NDCG10:+.4f}); "
          f"{secs:.0f}s for {ds.num_targets} targets + {m['num_queries']} queries")
    out = write_result("zeroshot", {"data": ds.name, "split": args.split, "max_length": args.max_length,
                                    "metrics": m, "mteb_ndcg@10": MTEB_NDCG10, "seconds": round(secs, 1)})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
