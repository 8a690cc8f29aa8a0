"""Speed settings for CPU (and GPU) runs. Only those that keep the numbers up to float rounding
are ever on by default (``MODEL.fast_inference``); reduced precision is always opt-in.

* :func:`to_channels_last` stores conv weights as NHWC. oneDNN (CPU) and cuDNN then run
  every convolution channels-last, which avoids layout reorders on each call; outputs equal
  the default layout's up to float rounding (a different summation order).
* :func:`fold_batchnorm` merges each eval-mode BatchNorm into the convolution before it, which
  saves one pass over every feature map (inference only; equal up to float rounding).
* :func:`optimize_for_inference` applies both; ``MODEL.fast_inference`` turns it on for
  ``eval.py``, ``eval_multipro.py`` and ``test.py``.
* Reduced precision (``amp="bf16"``) is an argument of
  :func:`mit_semseg.engine.inference.predict_probs` and ``TRAIN.amp`` for training; it changes the
  numbers, so it is never a default.
* :func:`compile_module` wraps :func:`torch.compile` with shapes marked dynamic (multi-scale
  inputs differ in size), for long runs where its start-up cost pays off.

``benchmarks/`` measures what each of these buys on a given machine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["compile_module", "fold_batchnorm", "optimize_for_inference", "to_channels_last"]

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


def fold_batchnorm(module: nn.Module, run_example: Callable[[], Any]) -> int:
    """Merges every eval-mode BatchNorm fed directly by a convolution into it, in place.

    Which BatchNorm follows which convolution is read from one example forward pass
    (``run_example``, e.g. a small zero image through the model): a BatchNorm whose input is
    the very tensor a ``Conv2d`` returned is folded (the convolution's weight is scaled by
    ``gamma / sqrt(running_var + eps)`` and it gets the matching bias) and replaced by
    ``nn.Identity``. This assumes such a convolution output feeds nothing but that
    BatchNorm, which holds for every model in the registry (tests check each). The state dict
    changes, so fold an inference copy, after loading the weights.

    Returns:
        the number of BatchNorm layers folded.
    Raises:
        ValueError: if ``module`` is in training mode (batch statistics cannot be folded).
    """
    if module.training:
        raise ValueError("fold_batchnorm needs a module in eval mode (call .eval() first)")
    # id -> (conv, output): holding the output keeps its id from being reused by a later tensor
    conv_outputs: dict[int, tuple[nn.Conv2d, torch.Tensor]] = {}
    pairs: list[tuple[nn.Conv2d, _BatchNorm]] = []

    def after_conv(conv: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        conv_outputs[id(output)] = (conv, output)

    def before_bn(bn: nn.Module, inputs: tuple) -> None:
        conv, _ = conv_outputs.get(id(inputs[0]), (None, None))
        if conv is not None and bn.running_mean is not None:
            pairs.append((conv, bn))

    handles = [m.register_forward_hook(after_conv) for m in module.modules()
               if isinstance(m, nn.Conv2d)]
    handles += [m.register_forward_pre_hook(before_bn) for m in module.modules()
                if isinstance(m, _BatchNorm)]
    try:
        with torch.inference_mode():
            run_example()
    finally:
        for handle in handles:
            handle.remove()
    conv_outputs.clear()
    folded = {id(bn) for _, bn in pairs}
    if len(folded) != len(pairs):
        raise ValueError("a BatchNorm ran more than once in the example pass; cannot fold")
    with torch.no_grad():
        for conv, bn in pairs:
            scale = torch.rsqrt(bn.running_var.double() + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight.double()
            shift = -bn.running_mean.double() * scale
            if bn.bias is not None:
                shift = shift + bn.bias.double()
            if conv.bias is not None:
                shift = shift + conv.bias.double() * scale
            weight = conv.weight.double() * scale.reshape(-1, 1, 1, 1)
            conv.weight.copy_(weight.to(conv.weight.dtype))
            conv.bias = nn.Parameter(shift.to(conv.weight.dtype), requires_grad=False)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if id(child) in folded:
                setattr(parent, name, nn.Identity())
    logger.debug("folded %d BatchNorm layers into convolutions", len(pairs))
    return len(pairs)


def optimize_for_inference(segmentation_module: nn.Module, device: torch.device | str,
                           channels_last: bool = True, fold_bn: bool = True) -> nn.Module:
    """Folds BatchNorm and switches to channels-last, in place, for eval-mode inference.

    Outputs equal the plain module's up to float rounding (about 1e-6 on probabilities).

    Returns:
        ``segmentation_module``, in eval mode.
    """
    segmentation_module.eval()
    if fold_bn:
        image = torch.zeros(1, 3, 64, 64, device=device)
        fold_batchnorm(segmentation_module,
                       lambda: segmentation_module({"img_data": image}, segSize=(64, 64)))
    if channels_last:
        to_channels_last(segmentation_module)
    return segmentation_module
