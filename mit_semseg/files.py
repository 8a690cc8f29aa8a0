"""Atomic file writes: a reader (or a resumed run) sees the old file or the whole new one.

Every result, list, picture and checkpoint the package writes goes through :func:`atomic_write`:
the content is written to ``.<name>.<random>.tmp`` in the destination folder, flushed, fsynced
and renamed over the destination with :func:`os.replace` (atomic on POSIX and Windows). A
failing writer leaves the destination untouched and removes its temporary file; a hard kill
can leave the temporary file behind, which is never mistaken for a result (see
:func:`mit_semseg.engine.checkpoint.remove_stale_temp_files`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import IO

__all__ = ["TEMP_SUFFIX", "atomic_write", "atomic_write_bytes", "atomic_write_text"]

TEMP_SUFFIX = ".tmp"


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> None:
    """Create or replace ``path`` with what ``write`` writes into the binary file it is given.

    The destination folder is created if needed; the new file gets the permissions a plain
    ``open(path, "w")`` would give it.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=TEMP_SUFFIX,
                               dir=folder)
    try:
        # mkstemp creates the file private (0600); give it the permissions open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> None:
    """:func:`atomic_write` of a bytes object."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` of UTF-8 text (``"\\n"`` line ends on every platform)."""
    atomic_write_bytes(path, text.encode("utf-8"))
