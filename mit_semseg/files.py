"""Atomic file writes (a reader sees the old file or the whole new one), and a lock file that
goes away with its holder.

Every result, list, picture and checkpoint the package writes goes through :func:`atomic_write`:
the content is written to ``.<name>.<random>.tmp`` in the destination folder, flushed, fsynced
and renamed over the destination with :func:`os.replace` (atomic on POSIX and Windows). A
failing writer leaves the destination untouched and removes its temporary file; a hard kill
can leave the temporary file behind, which is never mistaken for a result (see
:func:`mit_semseg.engine.checkpoint.remove_stale_temp_files`).

:func:`exclusive_lock` serialises processes (and threads) that fill one file of a shared cache.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import IO

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    from filelock import FileLock

__all__ = ["TEMP_SUFFIX", "atomic_write", "atomic_write_bytes", "atomic_write_text",
           "exclusive_lock"]

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


@contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive OS lock on the file ``path`` (created if needed), and delete it on
    release, so that no empty lock file stays behind.

    The lock (``flock``) belongs to an open file, so it dies with its process and is never
    stale. Deleting a lock file is safe only because the holder deletes it *before* unlocking
    and every taker checks, once it holds the lock, that ``path`` still names the file it
    locked: one that waited on a deleted file lets go and locks the new one. So at any time
    at most one process holds the lock on the file that ``path`` names. (On Windows,
    filelock's lock, which deletes its file on release there.)
    """
    path = os.fspath(path)
    if fcntl is None:
        with FileLock(path):
            yield
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the previous holder deleted this file: lock the one there now
    try:
        yield
    finally:
        with suppress(FileNotFoundError):
            os.unlink(path)  # while still locked: a process waiting on it will see it gone
        os.close(fd)  # releases the lock
