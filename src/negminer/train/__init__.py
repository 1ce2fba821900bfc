"""Training: the loop, checkpoints, counters."""
