"""The TrainerCallback that steps a NegativeCacheLoss with a Hugging Face / sentence-transformers trainer.

The trainer saves the model, optimiser, scheduler and RNGs in ``OUTPUT_DIR/checkpoint-N/`` and never a
loss's state; this callback adds ``checkpoint-N/negminer_cache/`` (the loss's ``save_cache``: store.npy,
store_age.npy, parts.safetensors, negminer_cache.json) in ``on_save``, right after the trainer wrote the
folder (so it leaves with the folder when ``save_total_limit`` rotates it out). ``on_train_begin`` of a
resumed run (``trainer.train(resume_from_checkpoint=...)``: the state's global_step > 0) loads it back from
the checkpoint being resumed: the path the trainer's loop was given (read from its frame), else
``OUTPUT_DIR/checkpoint-<global_step>``. A checkpoint without the folder (written without this callback)
is resumed with the store filled again from the resumed model, with a warning.

Events: on_train_begin (seed from args.seed unless given, the training pairs from the train dataset, the
resume), on_step_begin (the step's index: draws are seeded by it), on_step_end (the refreshers, after the
optimiser step), on_save (the cache). Single process: under several processes each would keep its own
store and only the main one's would be saved.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from transformers import TrainerCallback

from negminer.st.cache_loss import CACHE_DIR, STATE_FILE

logger = logging.getLogger(__name__)


class NegativeCacheCallback(TrainerCallback):
    def __init__(self, loss):
        self.loss = loss
        self.resumed_from: Path | None = None  # the cache folder the last resume loaded (None: none)

    def on_train_begin(self, args, state, control, **kwargs):
        loss = self.loss
        if loss.seed is None:
            loss.seed = args.seed
        if loss._train_counts is None:
            ds = kwargs.get("train_dataset")
            if ds is None:
                dl = kwargs.get("train_dataloader")
                ds = getattr(dl, "dataset", None)
            if ds is not None:
                loss.set_train_dataset(ds)
        if state.global_step > 0:
            ckpt = resume_folder(args, state)
            folder = ckpt / CACHE_DIR
            if (folder / STATE_FILE).is_file():
                meta = loss.load_cache(folder)
                if meta["step"] != state.global_step:
                    raise ValueError(f"{folder}: the negative cache of step {meta['step']}, resumed at step "
                                     f"{state.global_step}")
                self.resumed_from = folder
            else:
                logger.warning("NegativeCacheLoss: %s holds no %s/ (saved without the loss's callback?): the store is "
                               "filled again from the resumed model", ckpt, CACHE_DIR)
        loss.step = state.global_step
        loss._pending, loss._micro = [], 0

    def on_step_begin(self, args, state, control, **kwargs):
        self.loss.step = state.global_step
        self.loss._micro = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.loss.after_step()
        self.loss.step = state.global_step

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            self.loss.save_cache(Path(args.output_dir) / f"checkpoint-{state.global_step}" / CACHE_DIR)


def resume_folder(args, state) -> Path:
    """The checkpoint folder a resumed training loop started from: the ``resume_from_checkpoint`` its frame
    holds (transformers' Trainer does not pass it to callbacks), else OUTPUT_DIR/checkpoint-<global_step>."""
    f = sys._getframe(1)
    while f is not None:
        if f.f_code.co_name in ("_inner_training_loop", "train"):
            v = f.f_locals.get("resume_from_checkpoint")
            if isinstance(v, (str, os.PathLike)):
                return Path(v)
        f = f.f_back
    return Path(args.output_dir) / f"checkpoint-{state.global_step}"
