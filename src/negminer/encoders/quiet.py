"""Silence transformers' loading bars and warnings while our loaders run (restored afterwards)."""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def quiet_transformers():
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging

    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()
