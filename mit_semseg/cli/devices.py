"""Device lists from the command line (``--gpus``) or the config (``DEVICE``)."""

from __future__ import annotations

import re

import torch

__all__ = ["NotSupportedCliException", "bind_cuda_device", "parse_devices", "resolve_devices"]


class NotSupportedCliException(ValueError):
    """A ``--gpus`` / ``DEVICE`` value that cannot be parsed or used on this machine."""


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
    """Turn ``--gpus`` / ``DEVICE`` text into the list of devices a process runs on.

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
            'device(s); use "cpu" to run on the CPU'
        )
    return [torch.device("cuda", i) for i in indices]


def bind_cuda_device(device: torch.device) -> None:
    """Make a CUDA ``device`` the current device of this process (nothing for the CPU).

    Everything that uses "the current device" (the pinned-memory thread of a DataLoader,
    lazily created CUDA contexts, ``torch.cuda`` calls without a device) then lands on it.
    Without this, a process computing on GPU N also creates a context (~0.5 GB) on GPU 0,
    which fails outright when GPU 0 is in exclusive-process mode.
    """
    if device.type == "cuda":
        torch.cuda.set_device(device)
