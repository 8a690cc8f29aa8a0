"""Small helpers shared by the scripts: logging setup, device parsing, meters, atomic writes.

The names the original ``mit_semseg.utils`` exported (``setup_logger``, ``find_recursive``,
``AverageMeter``, ``parse_devices``, ``NotSupportedCliException``, ``accuracy``,
``intersectionAndUnion``, ``colorEncode``) keep working; the metric and colouring functions live
in :mod:`mit_semseg.metrics` and :mod:`mit_semseg.viz` and are forwarded on first use.
"""

from __future__ import annotations

import fnmatch
import importlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable
from typing import IO, Any

import torch

__all__ = [
    "AverageMeter",
    "NotSupportedCliException",
    "atomic_write",
    "atomic_write_text",
    "find_recursive",
    "parse_devices",
    "resolve_devices",
    "setup_logger",
    "setup_logging",
]

LOG_FORMAT = "[%(asctime)s %(levelname)s %(filename)s line %(lineno)d %(process)d] %(message)s"

# Forwarded on first access so that importing utils stays light and has no import cycle.
_FORWARDED = {
    "accuracy": "mit_semseg.metrics",
    "intersectionAndUnion": "mit_semseg.metrics",
    "colorEncode": "mit_semseg.viz.colorize",
}


def __getattr__(name: str) -> Any:
    if name in _FORWARDED:
        return getattr(importlib.import_module(_FORWARDED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def setup_logging(output_dir: str | None = None, rank: int = 0,
                  filename: str = "log.txt") -> logging.Logger:
    """Configure the root logger for a script (console, plus ``output_dir/filename``).

    Rank 0 logs at INFO; other ranks only report warnings and errors, to the console, so that
    a multi-process run prints each message once and only rank 0 writes the log file.

    Returns:
        The ``mit_semseg`` logger.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(LOG_FORMAT)
    console = logging.StreamHandler(stream=sys.stdout)
    console.setFormatter(formatter)
    root.addHandler(console)
    if rank == 0 and output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        log_file = logging.FileHandler(os.path.join(output_dir, filename), encoding="utf-8")
        log_file.setFormatter(formatter)
        root.addHandler(log_file)
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    return logging.getLogger("mit_semseg")


def setup_logger(distributed_rank: int = 0, filename: str = "log.txt") -> logging.Logger:
    """Original API: console logging for rank 0 (``filename`` was ignored there too)."""
    del filename
    return setup_logging(None, distributed_rank)


def find_recursive(root_dir: str, ext: str = ".jpg") -> list[str]:
    """All files under ``root_dir`` whose name ends with ``ext``, in a sorted, stable order."""
    found = []
    for folder, _, names in sorted(os.walk(root_dir)):
        found.extend(os.path.join(folder, n) for n in sorted(fnmatch.filter(names, "*" + ext)))
    return found


class AverageMeter:
    """Running (optionally weighted) average; works for floats and NumPy arrays."""

    def __init__(self) -> None:
        self.initialized = False
        self.val: Any = None
        self.avg: Any = None
        self.sum: Any = None
        self.count: Any = None

    def initialize(self, val: Any, weight: float) -> None:
        self.val, self.avg, self.sum, self.count = val, val, val * weight, weight
        self.initialized = True

    def update(self, val: Any, weight: float = 1) -> None:
        if self.initialized:
            self.add(val, weight)
        else:
            self.initialize(val, weight)

    def add(self, val: Any, weight: float) -> None:
        self.val = val
        self.sum = self.sum + val * weight
        self.count = self.count + weight
        self.avg = self.sum / self.count

    def value(self) -> Any:
        return self.val

    def average(self) -> Any:
        return self.avg


class NotSupportedCliException(ValueError):
    """A ``--gpus`` / ``--gpu`` value that cannot be parsed."""


_GPU_PATTERNS = (
    re.compile(r"^gpu(\d+)$"),
    re.compile(r"^(\d+)$"),
    re.compile(r"^gpu(\d+)-(?:gpu)?(\d+)$"),
    re.compile(r"^(\d+)-(\d+)$"),
)


def parse_devices(input_devices: str) -> list[str]:
    """Parse an original-style GPU list: ``"0-3"``, ``"gpu0,gpu2"``, ``"0,2,5-7"``.

    Ranges are inclusive and may be reversed. Duplicates are dropped, first occurrence kept.

    Returns:
        ``["gpu0", "gpu1", ...]`` as in the original.

    Raises:
        NotSupportedCliException: a token is not a GPU index or range.
    """
    result: list[str] = []
    for token in str(input_devices).split(","):
        token = token.strip().lower()
        for pattern in _GPU_PATTERNS:
            match = pattern.match(token)
            if match:
                ends = [int(g) for g in match.groups()]
                lo, hi = min(ends), max(ends)
                names = [f"gpu{i}" for i in range(lo, hi + 1)]
                break
        else:
            raise NotSupportedCliException(
                f'Can not recognize device: "{token}" (expected "cpu", "0", "gpu0", "0-3" or '
                '"0,2,gpu5")'
            )
        result.extend(n for n in names if n not in result)
    return result


_CPU_REPLICAS = re.compile(r"^cpu(?:x(\d+))?$")


def resolve_devices(spec: str, cuda_count: int | None = None) -> list[torch.device]:
    """Turn ``--gpus`` / ``DEVICE`` text into the list of devices a process trains on.

    Accepted: ``"auto"`` (GPU 0 if CUDA is available, else the CPU), ``"cpu"``, ``"cpuxK"`` (K
    model replicas on the CPU, computed one after the other; used to reproduce a K-device run
    on one machine), ``"cuda"`` / ``"cuda:N"``, and everything :func:`parse_devices` accepts.

    Raises:
        NotSupportedCliException: unparsable text, or GPUs that this machine does not have.
    """
    if cuda_count is None:
        cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    text = str(spec).strip().lower()
    if text == "auto":
        return [torch.device("cuda", 0) if cuda_count > 0 else torch.device("cpu")]
    match = _CPU_REPLICAS.match(text)
    if match:
        replicas = int(match.group(1) or 1)
        if replicas < 1:
            raise NotSupportedCliException(f'"{spec}": the number of CPU replicas must be >= 1')
        return [torch.device("cpu")] * replicas
    if text == "cuda":
        text = "0"
    elif text.startswith("cuda:"):
        text = text[len("cuda:"):]
    indices = [int(name[3:]) for name in parse_devices(text)]
    missing = [i for i in indices if i >= cuda_count]
    if missing:
        raise NotSupportedCliException(
            f'"{spec}": GPU(s) {missing} requested but this machine has {cuda_count} CUDA '
            'device(s); use "cpu" to train on the CPU'
        )
    return [torch.device("cuda", i) for i in indices]


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Write a file so that readers see either the old or the complete new content.

    ``write`` fills a temporary file in the same folder, which is flushed, fsynced and then
    renamed over ``path`` with :func:`os.replace` (atomic on POSIX and Windows). If ``write``
    raises or the process dies, ``path`` is untouched and the temporary file is removed (or,
    after a hard kill, left as a ``*.tmp`` file that is never mistaken for a result).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
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


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` for UTF-8 text."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
