"""Batching: which queries share a batch."""

from negminer.batching.ngame import NgameBatcher, balanced_clusters
from negminer.batching.random import RandomBatcher


def build_batcher(cfg, num_examples: int, positives, num_targets: int):
    """The batcher ``--batching`` names (random | ngame)."""
    if cfg.batching == "ngame":
        curriculum = [int(e) for e in str(cfg.ngame_curriculum).replace(" ", "").split(",") if e]
        return NgameBatcher(num_examples, cfg.batch_size, cfg.seed, positives, num_targets,
                            cluster_size=cfg.ngame_cluster_size, warmup=cfg.ngame_warmup,
                            recluster_every=cfg.ngame_recluster_every, curriculum=curriculum,
                            embeddings=cfg.ngame_embeddings)
    return RandomBatcher(num_examples, cfg.batch_size, cfg.seed, positives, num_targets)


__all__ = ["RandomBatcher", "NgameBatcher", "balanced_clusters", "build_batcher"]
