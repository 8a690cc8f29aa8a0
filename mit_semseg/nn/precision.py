"""Mixed precision for training and inference: checking the mode, autocast, gradient scaler.

A mode is ``""`` (fp32), ``"bf16"`` (CPU or CUDA) or ``"fp16"`` (CUDA only, with a gradient
scaler in training). The scripts call :func:`check_amp` once at start-up with the name of the
config key the mode came from (``TRAIN.amp``, ``VAL.amp`` or ``TEST.amp``), so a bad value is
reported under that name before any work starts.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["AMP_DTYPES", "autocast", "check_amp", "grad_scaler"]

AMP_DTYPES = {"": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(amp: str, device: torch.device, key: str = "amp") -> None:
    """Raise ``ValueError`` naming ``key`` unless ``amp`` is a mode that runs on ``device``."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"{key} must be one of {sorted(AMP_DTYPES)}, got {amp!r}")
    if amp == "fp16" and torch.device(device).type != "cuda":
        raise ValueError(f"{key} 'fp16' needs a CUDA device; use {key} bf16 on the CPU")


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to the ``amp`` dtype on ``device`` (a no-op context for ``""``).

    Raises:
        ValueError: see :func:`check_amp`.
    """
    check_amp(amp, device)
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=AMP_DTYPES[amp])


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """The training gradient scaler: enabled for fp16 on CUDA only (bf16 needs none)."""
    device = torch.device(device)
    return torch.amp.GradScaler(device.type, enabled=(amp == "fp16" and device.type == "cuda"))
