"""Deterministic CUDA forms of the three training ops that torch computes with atomic adds.

Under ``torch.use_deterministic_algorithms(True)`` (``TRAIN.deterministic``, see
:mod:`mit_semseg.engine.reproducibility`) torch raises on the CUDA backward of bilinear
interpolation and of adaptive average pooling, and on the CUDA NLL loss, because their kernels
accumulate with atomic adds in a varying order. The functions here compute the same values from
matrix products (both ops are separable linear maps, ``y = A_h x A_w^T``) and from a gather,
whose CUDA kernels are deterministic in that mode. Everywhere else (CPU, inference, the mode
off) they call the usual kernel, so nothing changes outside deterministic CUDA training. The
matrix forms equal the kernels up to float rounding (checked on the CPU by
``tests/nn/test_deterministic_ops.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .resample import adaptive_pool_matrix, bilinear_matrix

__all__ = [
    "AdaptiveAvgPool2d",
    "NLLLoss",
    "adaptive_avg_pool2d",
    "interpolate_bilinear",
    "nll_loss",
]


def _deterministic_cuda(x: Tensor) -> bool:
    return x.is_cuda and torch.are_deterministic_algorithms_enabled()


def _needs_matrix_form(x: Tensor) -> bool:
    # the forward kernels are deterministic; only their backward accumulates atomically
    return _deterministic_cuda(x) and torch.is_grad_enabled() and x.requires_grad


def _separable(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``rows @ x @ cols^T`` over the last two dims of ``x`` (N, C, H, W)."""
    return torch.matmul(torch.matmul(rows, x), cols.t())


def interpolate_bilinear(x: Tensor, size: Sequence[int]) -> Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)``, deterministic in
    deterministic CUDA training."""
    size = tuple(size)  # no int(): that would fix traced (exported) sizes to constants
    if not _needs_matrix_form(x):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    height, width = x.shape[-2:]
    rows = bilinear_matrix(height, size[0], x)
    cols = bilinear_matrix(width, size[1], x)
    return _separable(x, rows, cols)


# Left out of torch.compile graphs: inductor's adaptive pooling (and the matrix form's sizes)
# bake the input size into the graph, so each new image size would recompile (tens of seconds
# for a PPM head); cut out, the rest of the network compiles once with dynamic shapes.
@torch.compiler.disable
def adaptive_avg_pool2d(x: Tensor, output_size: int | Sequence[int]) -> Tensor:
    """``F.adaptive_avg_pool2d``, deterministic in deterministic CUDA training."""
    if not _needs_matrix_form(x):
        return F.adaptive_avg_pool2d(x, output_size)
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    height, width = x.shape[-2:]
    out_h, out_w = out_h or height, out_w or width  # None keeps that side, as in torch
    rows = adaptive_pool_matrix(height, out_h, x)
    cols = adaptive_pool_matrix(width, out_w, x)
    return _separable(x, rows, cols)


def nll_loss(log_probs: Tensor, target: Tensor, ignore_index: int = -100,
             weight: Tensor | None = None) -> Tensor:
    """Mean negative log-likelihood over the targets that are not ``ignore_index``
    (``F.nll_loss``; with class ``weight``, the weighted mean), deterministic on CUDA in
    deterministic mode."""
    if not _deterministic_cuda(log_probs):
        return F.nll_loss(log_probs, target, weight=weight, ignore_index=ignore_index)
    valid = target != ignore_index
    safe_target = torch.where(valid, target, 0)
    picked = log_probs.gather(1, safe_target.unsqueeze(1)).squeeze(1)
    pixel_weight = valid.to(picked.dtype)
    if weight is not None:
        pixel_weight = pixel_weight * weight.to(picked.dtype)[safe_target]
    return -(picked * pixel_weight).sum() / pixel_weight.sum()


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` running :func:`adaptive_avg_pool2d` (no parameters, so
    checkpoints are unaffected)."""

    def forward(self, input: Tensor) -> Tensor:
        return adaptive_avg_pool2d(input, self.output_size)


class NLLLoss(nn.NLLLoss):
    """``nn.NLLLoss`` (mean, optional class weights) running :func:`nll_loss`.

    Args:
        ignore_index: target value that adds nothing to the loss.
        weight: ``(num_class,)`` class weights (``TRAIN.class_weights``), or None for equal
            weights; a buffer, so it moves with the module.
    """

    def __init__(self, ignore_index: int = -100, weight: Tensor | None = None) -> None:
        super().__init__(weight=weight, ignore_index=ignore_index)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return nll_loss(input, target, self.ignore_index, self.weight)
