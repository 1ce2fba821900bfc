"""Durable, atomic file writes: the one helper every writer uses (standard library only, so any
module, config included, may import it).

A file is written to a temporary sibling, flushed and fsync'ed, renamed over the target, and the
folder is fsync'ed so that the rename itself survives a crash. A folder (checkpoint, saved model)
is built under a temporary sibling name and swapped in the same way; temporary names start with
``.`` and end with ``.tmp`` so that ``remove_stale_temps`` can clear what a killed writer left.

    atomic_write_json("run/metrics.json", {"ndcg@10": 0.61})
    with atomic_dir("run/checkpoint") as tmp:      # fill tmp; renamed to run/checkpoint on success
        (tmp / "trainer.json").write_text("{}")
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

TMP_SUFFIX = ".tmp"


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or file creation in ``path`` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (before it is renamed into place)."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(dirpath)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, keep_old: str | None = None, remove_old: bool = True):
    """Yield a temporary sibling folder; on success it replaces ``path`` whole. With ``keep_old``,
    the previous folder is renamed to that sibling name during the swap (so a kill between the
    two renames leaves one complete copy) and removed afterwards, unless ``remove_old`` is False."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX))
    try:
        yield tmp
        mask = _umask()
        for p in [tmp, *tmp.rglob("*")]:  # mkdtemp makes owner-only folders
            p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)
        fsync_tree(tmp)
        old = path.parent / (keep_old or f".{path.name}.old{TMP_SUFFIX}")
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if remove_old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy in the kernel (sendfile / copy_file_range), never through this process's memory."""
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        size = os.fstat(fi.fileno()).st_size
        sent = 0
        while sent < size:
            try:
                n = os.copy_file_range(fi.fileno(), fo.fileno(), size - sent)
            except (AttributeError, OSError):
                fo.seek(sent)
                fi.seek(sent)
                shutil.copyfileobj(fi, fo, 1 << 24)
                break
            if n == 0:
                break
            sent += n
        fo.flush()
        os.fsync(fo.fileno())


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove temporary files and folders that a killed writer left in ``folder``; returns them."""
    folder = Path(folder)
    gone = []
    if not folder.is_dir():
        return gone
    for p in folder.iterdir():
        if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            gone.append(p)
    return gone


def read_jsonl(path) -> list[dict]:
    """Rows of a JSONL file; stops at a torn last line (a writer killed mid-line)."""
    p = Path(path)
    if not p.exists():
        return []
    rows = []
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def check_output(path: str | os.PathLike, flag: str, folder: bool = True) -> None:
    """Before any work: ``path`` (a folder to fill, or a file to write when ``folder`` is False) can be
    written. Raises ConfigError naming ``flag`` and the path (a file where a folder should be, a parent that
    is a file, a folder not writable). Missing folders are created later, by the writers."""
    from negminer.errors import ConfigError

    p = Path(path).expanduser()
    if p.exists() and folder and not p.is_dir():
        raise ConfigError(f"{flag} {p}: is a file, not a folder")
    if p.exists() and not folder and p.is_dir():
        raise ConfigError(f"{flag} {p}: is a folder, not a file")
    probe = p if p.exists() and folder else p.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{flag} {p}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ConfigError(f"{flag} {p}: {probe if not p.exists() else p} is not writable")
