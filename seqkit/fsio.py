"""Crash-safe file writes: a reader (or a process that was killed half way) sees the old file or
the new one, never half of one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from .errors import SeqkitError

__all__ = ["atomic_write", "fsync_dir", "fsync_file", "write_text_atomic"]


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, then rename it over ``path`` and sync
    the folder; on any failure ``path`` is untouched and the temporary file removed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    """``text`` to ``path`` through ``atomic_write``, synced; a failure is one error naming the file."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    try:
        atomic_write(path, write)
    except OSError as exc:
        raise SeqkitError(f"{path}: could not write it ({exc.strerror or exc})") from None


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; not possible on every OS, and harmless to skip there."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
