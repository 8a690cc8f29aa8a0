"""Opt-in speed settings for CPU (and GPU) runs; the defaults elsewhere stay plain fp32.

* :func:`to_channels_last` stores conv weights as NHWC. oneDNN (CPU) and cuDNN then run
  every convolution channels-last, which avoids layout reorders on each call; outputs equal
  the default layout's up to float rounding (a different summation order).
* Reduced precision (``amp="bf16"``) is an argument of
  :func:`mit_semseg.inference.predict_probs` and ``TRAIN.amp`` for training; it changes the
  numbers, so it is never a default.
* :func:`compile_module` wraps :func:`torch.compile` with shapes marked dynamic (multi-scale
  inputs differ in size), for long runs where its start-up cost pays off.

``benchmarks/`` measures what each of these buys on a given machine.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

__all__ = ["compile_module", "to_channels_last"]

logger = logging.getLogger(__name__)


def to_channels_last(module: nn.Module) -> nn.Module:
    """Converts the 4-d parameters and buffers of ``module`` to channels-last, in place.

    Inputs need no conversion: a convolution whose weight is channels-last produces a
    channels-last output whatever the input layout.

    Returns:
        ``module`` itself, for chaining.
    """
    return module.to(memory_format=torch.channels_last)


def compile_module(module: nn.Module, mode: str | None = None) -> nn.Module:
    """``torch.compile(module, dynamic=True, mode=mode)``.

    The compiled module shares parameters with ``module`` (state dicts and checkpoints keep
    using ``module``). The first calls at each new input rank compile, which takes seconds
    to minutes on a CPU.
    """
    logger.info("compiling %s (mode=%s)", type(module).__name__, mode)
    return torch.compile(module, dynamic=True, mode=mode)
