"""Writes of a run turned into one-line errors: a full disk or a lost permission mid-run names the file and
exits 1 (``SaveError``); writes are atomic (fileio.py), so the previous checkpoint or file is intact."""

from __future__ import annotations

import contextlib

from negminer.errors import SaveError

try:
    from safetensors import SafetensorError
except ImportError:  # older safetensors
    from safetensors._safetensors_rust import SafetensorError


@contextlib.contextmanager
def writing(what, intact: str = "the previous checkpoint is intact"):
    try:
        yield
    except OSError as e:
        raise SaveError(f"{e.filename or what}: cannot write {what}: {e.strerror or e}; {intact}") from None
    except SafetensorError as e:  # its I/O errors (disk full, file too large) are not OSErrors
        if "I/O error" not in str(e):
            raise
        raise SaveError(f"cannot write {what}: {str(e).split('I/O error: ', 1)[-1]}; {intact}") from None
