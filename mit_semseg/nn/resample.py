"""Resampling written as explicit matrices built from the sizes at run time.

Three users need resampling as plain linear algebra rather than as PyTorch's fused kernels:

* ONNX export with a dynamic input size: ``AdaptiveAvgPool2d(s)`` has no ONNX equivalent
  when the input size is unknown (ONNX pooling kernels are fixed at export time), so
  :class:`MatrixAdaptiveAvgPool2d` computes the same bins as ``P_h @ x @ P_w^T`` with pooling
  matrices made from ``arange`` of the traced size.
* The factored PPM and UPerNet heads (:mod:`mit_semseg.models.decoders.factored`) apply a 3x3
  convolution to bilinearly upsampled maps in closed form, which needs the bilinear weights
  as a matrix.
* Deterministic CUDA training (:mod:`mit_semseg.nn.deterministic_ops`): the backward of these
  matrix products has no atomic adds, unlike the backward of PyTorch's kernels.

Both follow PyTorch's index rules exactly, so results equal the fused kernels up to float
rounding (tests compare them).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MatrixAdaptiveAvgPool2d", "adaptive_pool_matrix", "bilinear_matrix"]


def adaptive_pool_matrix(in_size: int, out_size: int, like: torch.Tensor) -> torch.Tensor:
    """``(out_size, in_size)`` averaging weights of ``adaptive_avg_pool`` along one axis.

    Bin ``i`` averages inputs ``[floor(i * n / s), ceil((i + 1) * n / s))``, PyTorch's bins
    (``n`` = ``in_size``, ``s`` = ``out_size``). ``like`` gives the dtype and device.
    """
    bins = torch.arange(out_size, device=like.device)
    start = torch.div(bins * in_size, out_size, rounding_mode="floor")
    end = torch.div((bins + 1) * in_size + out_size - 1, out_size, rounding_mode="floor")
    index = torch.arange(in_size, device=like.device)
    inside = (index[None, :] >= start[:, None]) & (index[None, :] < end[:, None])
    exact = torch.promote_types(like.dtype, torch.float32)
    return (inside.to(exact) / (end - start)[:, None].to(exact)).to(like.dtype)


def bilinear_matrix(in_size: int, out_size: int, like: torch.Tensor) -> torch.Tensor:
    """``(out_size, in_size)`` weights of bilinear resizing along one axis.

    ``align_corners=False`` as in ``F.interpolate(..., size=...)``: output ``y`` samples input
    coordinate ``(y + 0.5) * in / out - 0.5``, clamped at 0, from its two neighbours (the
    upper one clamped at the last index), computed in the precision PyTorch's kernel uses
    (float32 for half types). ``like`` gives the dtype and device.
    """
    exact = torch.promote_types(like.dtype, torch.float32)
    target = torch.arange(out_size, device=like.device, dtype=exact)
    source = ((target + 0.5) * (in_size / out_size) - 0.5).clamp(min=0)
    low = source.floor().clamp(max=in_size - 1)
    high = (low + 1).clamp(max=in_size - 1)
    frac = source - low
    columns = torch.arange(in_size, device=like.device, dtype=exact)
    weights = ((1 - frac)[:, None] * (columns == low[:, None])
               + frac[:, None] * (columns == high[:, None]))
    return weights.to(like.dtype)


class MatrixAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two matrix products, exportable with a dynamic input size.

    Args:
        output_size: ``s`` or ``(s_h, s_w)``, as for ``nn.AdaptiveAvgPool2d``.
    """

    def __init__(self, output_size: int | tuple[int, int]) -> None:
        super().__init__()
        size = (output_size, output_size) if isinstance(output_size, int) else output_size
        if any(s is None for s in size):
            raise ValueError("MatrixAdaptiveAvgPool2d needs explicit output sizes, got None")
        self.output_size = (int(size[0]), int(size[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, s_h, s_w)
        if self.output_size == (1, 1):
            # a plain mean; as a (1, H) matrix product torch.export cannot prove the traced
            # reshapes valid for every size and falls back to slower tracing strategies. Rows
            # then columns: inductor's C++ code guards on a reduction's length (a summation
            # helper above 4096 terms), so one mean over H*W pixels would recompile a
            # dynamic-shape graph when a map crosses 4096 pixels; each of these two stays under
            # it up to 4096-pixel maps (32768-pixel images at stride 8).
            return x.mean(dim=-1, keepdim=True).mean(dim=-2, keepdim=True)
        rows = adaptive_pool_matrix(x.shape[-2], self.output_size[0], x)
        cols = adaptive_pool_matrix(x.shape[-1], self.output_size[1], x)
        # Per image, channels as the matrices' columns: ``(W, s_h, H) @ (W, H, C)`` then
        # ``(s_h, s_w, W) @ (s_h, W, C)``, explicit batched products. ``rows @ x @ cols.T``
        # multiplies each channel's (H, W) slice on its own, which on the channels-last maps of
        # a compiled graph copies every slice first (thousands of copies per forward); matmul's
        # own folding would reshape across the symbolic sizes, which torch.export refuses.
        s_h, s_w = self.output_size
        pooled = []
        for image in x.unbind(0):
            pixels = image.permute(2, 1, 0)  # (W, H, C)
            over_rows = torch.bmm(rows.expand(pixels.shape[0], s_h, -1), pixels)  # (W, s_h, C)
            over_both = torch.bmm(cols.expand(s_h, s_w, -1), over_rows.transpose(0, 1))
            pooled.append(over_both.permute(2, 0, 1))  # (C, s_h, s_w)
        return torch.stack(pooled)
