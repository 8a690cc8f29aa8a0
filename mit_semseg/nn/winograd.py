"""3x3 convolution in Winograd's F(2x2, 3x3) form: 2.25x fewer multiply-adds, for CPU training.

A zero-padded, stride-1 3x3 convolution spends 36 multiply-adds per 2x2 output tile and
channel pair. Winograd's minimal filtering algorithm transforms every overlapping 4x4 input
tile and every kernel into 16 numbers each (``B^T d B`` and ``G g G^T``); a tile's 2x2 outputs
then need only the 16 elementwise products, summed over input channels, and one more
transform (``A^T m A``). Summing over channels makes those products 16 matrix products
(``(out, in) @ (in, tiles)``), where all the FLOPs are; the transforms hold only 0, +-1 and
+-1/2 and cost memory passes, not FLOPs.

Where it pays (:func:`winograd_pays`): on CPU, in float32, for wide convolutions such as the
segmentation heads' 3x3 layers on ResNet-50's maps (2048 -> 512, 1024 -> 512 channels),
where forward and backward take 0.58-0.61x the direct convolution's time on a 2-vCPU AMD
EPYC (``benchmarks/bench_winograd.py``; ``bench_train.py`` measures whole steps). Narrow
convolutions (64 channels) lose to oneDNN's direct kernels, the transforms being
memory-bound, and are left to ``F.conv2d``. The saving needs freed memory to be reused
rather than handed back to the kernel after every step
(:func:`mit_semseg.nn.host_allocator.keep_freed_memory`, which ``train.py`` applies):
otherwise every transform's output is fresh pages to fault in. GPUs are never routed here:
cuDNN chooses Winograd kernels by itself.

Rounding: measured against float64, the result and both gradients are as close as the direct
convolution's (tests/nn/test_winograd.py); in float64 the two agree to 1e-12.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["MIN_CHANNEL_PRODUCT", "conv3x3", "winograd_conv3x3", "winograd_pays"]

# The rule's thresholds: in_channels * out_channels, and 2x2 output tiles per image (16x16
# maps). Above them the form took 0.58-0.76x the direct convolution's time at 1 and 2 threads
# (section winograd@epyc-avx512bf16 of benchmarks/RESULTS.md). They are conservative: it also
# gained on 256 x 256 channels and on 12x12 maps (0.71-0.93x); lowering them waits for a
# re-run of the training benchmarks, whose published figures use these values.
MIN_CHANNEL_PRODUCT = 512 * 512
MIN_TILES = 64

# Kernel transform G and output transform A^T of F(2x2, 3x3); the input transform B^T is
# applied as additions (_b_t_into).
_G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))
_A_T = ((1, 1, 1, 0), (0, 1, -1, -1))


def _transforms(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2-D kernel (16, 9) and output (4, 16) transforms as matrices on flattened tiles,
    each the Kronecker product of its 1-D matrix with itself."""
    def kron(rows: tuple) -> torch.Tensor:
        matrix = torch.tensor(rows, dtype=like.dtype, device=like.device)
        return torch.kron(matrix, matrix)
    return kron(_G), kron(_A_T)


def _tiles(height: int, width: int) -> tuple[int, int]:
    """Number of 2x2 output tiles along each side (an odd side gets a half-empty last tile)."""
    return -(-height // 2), -(-width // 2)


def _tile_rows(x: torch.Tensor, dim: int, count: int) -> list[torch.Tensor]:
    """Views of rows ``k, k + 2, ...`` (``count`` of them) along ``dim``, for ``k`` = 0..3: the
    k-th row of every 4-row tile at stride 2."""
    index = [slice(None)] * x.dim()
    views = []
    for k in range(4):
        index[dim] = slice(k, k + 2 * count - 1, 2)
        views.append(x[tuple(index)])
    return views


def _b_t_into(d: Sequence[torch.Tensor], out: Sequence[torch.Tensor]) -> None:
    """``out = B^T d`` along one axis of the tiles: d0 - d2, d1 + d2, d2 - d1, d1 - d3."""
    torch.sub(d[0], d[2], out=out[0])
    torch.add(d[1], d[2], out=out[1])
    torch.sub(d[2], d[1], out=out[2])
    torch.sub(d[1], d[3], out=out[3])


def _b(v: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """``B v`` along one axis of the tiles, the transpose of :func:`_b_t_into`."""
    return v[0], v[1] - v[2] + v[3], v[1] + v[2] - v[0], -v[3]


def _input_transform(x: torch.Tensor) -> torch.Tensor:
    """``(16, C, N * tiles)``: every 4x4 tile of the zero-padded ``x`` (stride 2), transformed
    as ``B^T d B``: along the rows, then along the columns, each step a few additions of
    strided views (a convolution with the 16 transform kernels costs more)."""
    batch, channels, height, width = x.shape
    rows, cols = _tiles(height, width)
    padded = F.pad(x, (1, 2 * cols + 1 - width, 1, 2 * rows + 1 - height))
    by_row = padded.new_empty(4, batch, channels, rows, padded.shape[3])
    _b_t_into(_tile_rows(padded, 2, rows), by_row)
    tiles = x.new_empty(4, 4, channels, batch, rows, cols)
    for i in range(4):  # written through (N, C, ...) views of the (C, N, ...) result
        _b_t_into(_tile_rows(by_row[i], 3, cols), tiles[i].transpose(1, 2))
    return tiles.reshape(16, channels, batch * rows * cols)


def _input_transform_grad(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The adjoint of :func:`_input_transform`: ``(N, C, H, W)`` from ``(16, C, N * tiles)``
    (``B g B^T`` per tile, then the overlapping tiles added back into place)."""
    batch, channels, height, width = shape
    rows, cols = _tiles(height, width)
    grad = grad.reshape(4, 4, channels, batch, rows, cols).transpose(2, 3)  # (., ., N, C, ...)
    by_column = [_b(grad[i].unbind(0)) for i in range(4)]
    padded = grad.new_zeros(batch, channels, 2 * rows + 2, 2 * cols + 2)
    for c in range(4):
        column = _b([by_column[i][c] for i in range(4)])
        for r in range(4):
            padded[:, :, r:r + 2 * rows - 1:2, c:c + 2 * cols - 1:2] += column[r]
    return padded[:, :, 1:height + 1, 1:width + 1]


def _kernel_transform(weight: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``(16, out, in)`` from an ``(out, in, 3, 3)`` kernel."""
    out_channels, in_channels = weight.shape[:2]
    taps = weight.reshape(out_channels * in_channels, 9)
    return (g @ taps.t()).reshape(16, out_channels, in_channels)


def _kernel_transform_grad(grad: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The adjoint of :func:`_kernel_transform`: ``(out, in, 3, 3)`` from ``(16, out, in)``."""
    _, out_channels, in_channels = grad.shape
    taps = g.t() @ grad.reshape(16, out_channels * in_channels)
    return taps.t().reshape(out_channels, in_channels, 3, 3)


def _output_transform(products: torch.Tensor, a_t: torch.Tensor,
                      shape: tuple[int, int, int, int]) -> torch.Tensor:
    """``(N, K, H, W)`` from the ``(16, K, N * tiles)`` products."""
    batch, out_channels, height, width = shape
    rows, cols = _tiles(height, width)
    y = (a_t @ products.reshape(16, -1)).reshape(2, 2, out_channels, batch, rows, cols)
    y = y.permute(3, 2, 4, 0, 5, 1).reshape(batch, out_channels, 2 * rows, 2 * cols)
    return y[:, :, :height, :width]


def _output_transform_grad(grad: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """The adjoint of :func:`_output_transform`: ``(16, K, N * tiles)`` from ``(N, K, H, W)``."""
    batch, out_channels, height, width = grad.shape
    rows, cols = _tiles(height, width)
    grad = F.pad(grad, (0, 2 * cols - width, 0, 2 * rows - height))
    grad = grad.reshape(batch, out_channels, rows, 2, cols, 2).permute(3, 5, 1, 0, 2, 4)
    return (a_t.t() @ grad.reshape(4, -1)).reshape(16, out_channels, batch * rows * cols)


class _WinogradConv3x3(torch.autograd.Function):
    """Forward and backward in the transformed domain; saves only the input and the
    transformed kernel (the transformed input, 4x the input's size, is recomputed)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        g, a_t = _transforms(x)
        kernel = _kernel_transform(weight, g)
        products = torch.bmm(kernel, _input_transform(x))
        ctx.save_for_backward(x, kernel)
        shape = (x.shape[0], weight.shape[0], x.shape[2], x.shape[3])
        return _output_transform(products, a_t, shape).contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x, kernel = ctx.saved_tensors
        g, a_t = _transforms(x)
        grad_products = _output_transform_grad(grad_out, a_t)
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = _input_transform_grad(torch.bmm(kernel.transpose(1, 2), grad_products),
                                           x.shape)
        if ctx.needs_input_grad[1]:
            tiles = _input_transform(x)
            grad_weight = _kernel_transform_grad(
                torch.bmm(grad_products, tiles.transpose(1, 2)), g)
        return grad_x, grad_weight


def winograd_conv3x3(x: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` in the F(2x2, 3x3) form; differentiable in
    all three (no second derivative).

    Args:
        x: ``(N, C, H, W)``, any size and memory layout.
        weight: ``(K, C, 3, 3)``, same dtype and device as ``x``.
        bias: ``(K,)`` or None.

    Returns:
        ``(N, K, H, W)``, contiguous.
    """
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[2:] != (3, 3):
        raise ValueError(f"expected a (N, C, H, W) input and a (K, C, 3, 3) kernel, got "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"the kernel reads {weight.shape[1]} channels, the input has "
                         f"{x.shape[1]}")
    y = _WinogradConv3x3.apply(x, weight)
    return y if bias is None else y + bias.reshape(1, -1, 1, 1)


def winograd_pays(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`winograd_conv3x3` is expected to beat ``F.conv2d`` here: a float32 CPU
    computation outside autocast (low precision would lose the transforms' accuracy), a
    kernel of at least :data:`MIN_CHANNEL_PRODUCT` channel pairs, and :data:`MIN_TILES`
    output tiles per image."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if torch.is_autocast_enabled("cpu") or x.dim() != 4 or weight.shape[2:] != (3, 3):
        return False
    rows, cols = _tiles(x.shape[2], x.shape[3])
    return weight.shape[0] * weight.shape[1] >= MIN_CHANNEL_PRODUCT and rows * cols >= MIN_TILES


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
            ) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)``, in the Winograd form where
    :func:`winograd_pays`."""
    if winograd_pays(x, weight):
        return winograd_conv3x3(x, weight, bias)
    return F.conv2d(x, weight, bias, padding=1)
