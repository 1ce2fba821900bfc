"""The composition: how the parts of one training step fit together (loss inputs from draws and pools)."""

from negminer.pipeline.assemble import all_inputs, inbatch_mask, loss_inputs, shared_inputs

__all__ = ["all_inputs", "inbatch_mask", "loss_inputs", "shared_inputs"]
