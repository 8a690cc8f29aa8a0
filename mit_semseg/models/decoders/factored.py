"""The PPM and UPerNet heads' fusion convolution without convolving upsampled maps.

Both heads end in a 3x3 convolution over a concatenation that holds bilinearly upsampled maps:
PPM's fusion convolution reads ``conv5`` next to its pooled branches (1 to 6 pixels wide),
UPerNet's reads the finest FPN map next to the three coarser ones upsampled 2x, 4x and 8x.
Convolution is linear, so the part that reads an upsampled map ``up(m)`` can be computed at
``m``'s own size (:func:`upsampled_conv3x3`): apply each of the kernel's 9 taps ``W_kl`` to
``m`` (one 1x1 convolution with ``9 * out`` channels on ``m``'s pixels, ``f^2`` times fewer
than the output's for an ``f``-times upsampling), then resample with bilinear matrices shifted
by the tap offsets (``sum_k R_k (sum_l W_kl m C_l^T)``, zero rows where a tap reads the
padding). The result equals the convolution of the concatenation up to float rounding; what
it saves:

* PPM: the fusion convolution's pooled-branch half (4 x 512 of ResNet-50's 2048 + 2048 input
  channels).
* UPerNet: three quarters of the final fusion convolution, which reads 2048 channels at a
  quarter of the image size and is the network's largest layer.

UPerNet's own pyramid pooling cannot be factored this way (its branches apply ReLU after
upsampling), and is small anyway.

Two forms use it:

* Training (:func:`fused_conv3x3`): the PPM and UPerNet decoders call it on their own fusion
  convolution's parameters whenever they train or autograd records them
  (:func:`factored_now`; ``factored_training``, ``TRAIN.factored_heads``), so gradients reach
  the very weights the checkpoint holds; BatchNorm, deep supervision and the state dict are
  unchanged.
* Inference (:class:`FactoredPPMDecoder`, :class:`FactoredUPerNetDecoder`, installed by
  :func:`factor_decoders`, which
  :func:`mit_semseg.inference.fast_path.optimize_for_inference` calls with
  ``MODEL.fast_inference``, and which int8 inference quantizes): the taps are rearranged
  once into 1x1 convolutions (:class:`UpsampledConv3x3`), after BatchNorm folding; no
  training forward, no deep-supervision head.

Every product keeps the image's height and width in dimensions of their own (no reshape
merges them with another), so ``torch.export`` traces both forms for every input size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mit_semseg.nn.resample import bilinear_matrix
from mit_semseg.nn.winograd import conv3x3

from ..layers import is_same_size_conv3x3

__all__ = ["FactoredPPMDecoder", "FactoredUPerNetDecoder", "TapResampling", "UpsampledConv3x3",
           "factor_decoders", "factored_now", "fused_conv3x3", "upsampled_conv3x3"]


def _shifted_bilinear(size: int, out_size: int, like: torch.Tensor) -> torch.Tensor:
    """``(3, out_size, size)``: the bilinear matrix with its output shifted by -1, 0 and 1."""
    matrix = bilinear_matrix(size, out_size, like)
    padded = F.pad(matrix, (0, 0, 1, 1))
    return torch.stack([padded[k:k + out_size] for k in range(3)])


def _kernel_taps(weight: torch.Tensor) -> torch.Tensor:
    """``(9 * out, in)``: a ``(out, in, 3, 3)`` kernel as one matrix per tap, stacked with rows
    ordered (tap row k, tap column l, output channel)."""
    return weight.permute(2, 3, 0, 1).reshape(9 * weight.shape[0], weight.shape[1])


def _check_kernels(weights: Sequence[torch.Tensor]) -> int:
    """The common output width of ``(out, in_i, 3, 3)`` kernels; ValueError otherwise."""
    if not weights:
        raise ValueError("expected at least one kernel")
    out = int(weights[0].shape[0])
    for index, weight in enumerate(weights):
        if weight.dim() != 4 or weight.shape[0] != out or weight.shape[2:] != (3, 3):
            raise ValueError(f"expected (out={out}, in, 3, 3) kernels, got "
                             f"{tuple(weight.shape)} for input {index}")
    return out


def _tap_products(tap: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(B, 9 * out, h, w)``: every tap of the kernel (:func:`_kernel_taps` ``tap``) applied
    to ``x`` at ``x``'s own size, as a 1x1 convolution, NCHW."""
    # NCHW in and out: the resampling needs NCHW products, and transposing the 9x wider
    # output of a channels-last convolution costs more than transposing its input
    return F.conv2d(x.contiguous(), tap[:, :, None, None])


def _resample_tap_products(products: Sequence[torch.Tensor], size: Sequence[int]
                           ) -> torch.Tensor:
    """``sum_i sum_kl R_k P_ikl C_l^T``: the :func:`_tap_products` of each map upsampled to
    ``size = (H, W)`` with the bilinear matrices shifted by the tap offsets, summed.
    ``(B, out, H, W)``, NCHW.

    Every product has a batch of static dimensions (B, out) and two symbolic ones, never
    merged: a reshape that merges symbolic sizes makes ``torch.export`` guard on them, and
    the export fails for a dynamic image size.
    """
    height, width = size[0], size[1]  # symbolic under torch.export: no int()
    columns, rows = [], []
    for product in products:
        # NCHW: on a channels-last product the batched matrix products below fall back to
        # one small product per channel
        product = product.contiguous()
        h, w = product.shape[-2:]
        like = product if product.dtype in (torch.float32, torch.float64) else product.float()
        # (W, 3w): [C_0 | C_1 | C_2]
        column = torch.cat(list(_shifted_bilinear(w, width, like)), 1).to(product.dtype)
        # one chunk per tap (k, l); chunks, not slices, so the backward is one concatenation
        taps = product.chunk(9, 1)
        for k in range(3):
            taps_k = torch.cat(taps[3 * k:3 * k + 3], 3)  # (B, out, h, 3w): l = 0, 1, 2
            columns.append(column @ taps_k.transpose(2, 3))  # (B, out, W, h): sum_l C_l P^T
        rows.append(torch.cat(list(_shifted_bilinear(h, height, like)), 1))  # (H, 3h)
    row_matrix = torch.cat(rows, 1).to(columns[0].dtype)
    return row_matrix @ torch.cat(columns, 3).transpose(2, 3)


def upsampled_conv3x3(weights: Sequence[torch.Tensor], maps: Sequence[torch.Tensor],
                      size: Sequence[int]) -> torch.Tensor:
    """``sum_i conv3x3(up(maps[i]), weights[i])``, computed at the maps' own sizes.

    ``up`` is bilinear resizing to ``size`` (``align_corners=False``), the convolution has
    zero padding 1, stride 1 and no bias. Differentiable in the weights and the maps.

    Args:
        weights: one ``(out, in_i, 3, 3)`` kernel per map (views of a larger kernel are fine).
        maps: ``(B, in_i, h_i, w_i)`` each.
        size: ``(H, W)`` of the upsampled maps and of the result.

    Returns:
        ``(B, out, H, W)``, NCHW.
    """
    _check_kernels(weights)
    if len(maps) != len(weights):
        raise ValueError(f"expected {len(weights)} maps, got {len(maps)}")
    products = [_tap_products(_kernel_taps(w), x) for w, x in zip(weights, maps)]
    return _resample_tap_products(products, size)


def _check_fusion(conv: nn.Module) -> None:
    if not is_same_size_conv3x3(conv):
        raise ValueError(f"cannot factor a head whose fusion convolution is {conv}")


def fused_conv3x3(conv: nn.Conv2d, x: torch.Tensor, small_maps: Sequence[torch.Tensor]
                  ) -> torch.Tensor:
    """``conv(cat([x, up(m_1), ..., up(m_n)], 1))`` without building the upsampled maps.

    ``up`` resizes bilinearly to ``x``'s size. The kernel's first ``x.shape[1]`` input
    channels convolve ``x`` as usual, the rest run :func:`upsampled_conv3x3` on the small
    maps; on CPU in float32 the first part is in Winograd form where that is faster
    (:func:`mit_semseg.nn.winograd.conv3x3`). The kernel and bias are ``conv``'s own
    parameters (sliced, never copied), so gradients reach them as they would through
    ``conv``; the result and every gradient equal the plain computation's up to float
    rounding.

    Raises:
        ValueError: ``conv`` is not a 3x3, stride-1, zero-padded convolution, or the widths of
            ``x`` and the small maps do not add up to its input channels.
    """
    _check_fusion(conv)
    widths = [x.shape[1]] + [m.shape[1] for m in small_maps]
    if sum(widths) != conv.in_channels:
        raise ValueError(f"{conv} reads {conv.in_channels} channels, but the maps have "
                         f"{' + '.join(map(str, widths))}")
    direct, *upsampled = torch.split(conv.weight, widths, dim=1)
    fused = conv3x3(x, direct, conv.bias)
    if not small_maps:
        return fused
    return fused + upsampled_conv3x3(upsampled, small_maps, x.shape[-2:]).to(fused.dtype)


def factored_now(decoder: nn.Module) -> bool:
    """Whether a PPM or UPerNet decoder computes its fusion in the factored form now.

    It does when its ``factored_training`` is set and it trains or autograd records (e.g.
    ``TRAIN.fix_bn``, which trains in eval mode). Inference (eval mode, no autograd) keeps
    the original's arithmetic; :func:`factor_decoders` is its fast form. Decoders without
    the attribute (C1) never do.
    """
    return (getattr(decoder, "factored_training", False)
            and (decoder.training or torch.is_grad_enabled()))


class TapResampling(nn.Module):
    """:func:`_resample_tap_products` as a module without parameters, so that int8 inference
    can leave it in float32 by name: its operands are bilinear weights, not activations."""

    # Eager under torch.compile: the resampling matrices are built from the sizes, which would
    # make every new input size a recompilation.
    @torch.compiler.disable
    def forward(self, products: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        """``(B, out, H, W)`` for ``size = (H, W)``, in NCHW layout."""
        return _resample_tap_products(products, size)


class UpsampledConv3x3(nn.Module):
    """:func:`upsampled_conv3x3` for fixed kernels, rearranged once (inference).

    The taps are 1x1 convolutions (:attr:`taps`, ``9 * out`` channels per input map),
    followed by :attr:`resample`.

    Args:
        weights: one ``(out, in_i, 3, 3)`` kernel per input map.
    """

    def __init__(self, weights: Sequence[torch.Tensor]) -> None:
        super().__init__()
        self.out_channels = _check_kernels(weights)
        # plain nn.Conv2d modules: the int8 quantizer recognises convolutions by module type
        self.taps = nn.ModuleList()
        for weight in weights:
            taps = nn.Conv2d(weight.shape[1], 9 * self.out_channels, 1, bias=False,
                             device=weight.device, dtype=weight.dtype)
            with torch.no_grad():
                taps.weight.copy_(_kernel_taps(weight)[:, :, None, None])
            self.taps.append(taps)
        self.resample = TapResampling()

    def forward(self, maps: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        """``(B, out, H, W)`` for ``size = (H, W)``, in NCHW layout."""
        if len(maps) != len(self.taps):
            raise ValueError(f"expected {len(self.taps)} maps, got {len(maps)}")
        return self.resample([taps(x) for taps, x in zip(self.taps, maps)], size)


def _split_fusion(fusion: nn.Module, direct_channels: int, upsampled_channels: Sequence[int]
                  ) -> tuple[nn.Conv2d, UpsampledConv3x3 | None]:
    """The 3x3 ``fusion`` convolution as (a convolution of its first ``direct_channels``,
    the closed form for the upsampled inputs that follow, None if there are none)."""
    _check_fusion(fusion)
    weight = fusion.weight.detach()
    direct = nn.Conv2d(direct_channels, fusion.out_channels, 3, padding=1,
                       bias=fusion.bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        direct.weight.copy_(weight[:, :direct_channels])
        if fusion.bias is not None:
            direct.bias.copy_(fusion.bias)
    if not upsampled_channels:  # e.g. UPerNet on a single-map encoder (HRNetV2)
        return direct, None
    kernels = torch.split(weight[:, direct_channels:], list(upsampled_channels), dim=1)
    return direct, UpsampledConv3x3(kernels)


def _fuse(direct: nn.Module, upsampled: UpsampledConv3x3 | None, x: torch.Tensor,
          small_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    fused = direct(x)  # keeps x's memory layout
    if upsampled is None:
        return fused
    return fused + upsampled(small_maps, x.shape[-2:]).to(fused.dtype)


class FactoredPPMDecoder(nn.Module):
    """Inference form of a PPM decoder: the same logits for about half the head's FLOPs.

    Shares the pooling branches with the decoder it came from; the fusion convolution is
    split into :attr:`conv_main` (on ``conv5``) and :attr:`branch_conv` (the branches).
    """

    deep_sup = False

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        top = decoder.in_channels[-1]
        self.num_class = decoder.num_class
        self.in_channels = list(decoder.in_channels)
        self.output_index = decoder.output_index
        self.branches = decoder.ppm
        widths = [branch[1].out_channels for branch in decoder.ppm]
        self.conv_main, self.branch_conv = _split_fusion(decoder.conv_last[0], top, widths)
        self.post = decoder.conv_last[1:]  # norm, ReLU, dropout, 1x1 classifier

    def forward(self, conv_out: Sequence[torch.Tensor]) -> torch.Tensor:
        """Class scores ``(B, num_class, h, w)``, equal to the PPM decoder's."""
        conv5 = conv_out[-1]
        pooled = [branch(conv5) for branch in self.branches]
        return self.post(_fuse(self.conv_main, self.branch_conv, conv5, pooled))


class FactoredUPerNetDecoder(nn.Module):
    """Inference form of a UPerNet decoder: the same logits without convolving the three
    upsampled FPN maps at the finest size (three quarters of the fusion convolution).

    Shares the pyramid pooling and FPN layers with the decoder it came from.
    """

    deep_sup = False

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.num_class = decoder.num_class
        self.in_channels = list(decoder.in_channels)
        self.output_index = decoder.output_index
        for name in ("ppm_pooling", "ppm_conv", "ppm_last_conv", "fpn_in", "fpn_out"):
            setattr(self, name, getattr(decoder, name))
        self._pyramid = type(decoder).feature_pyramid
        fusion_block = decoder.conv_last[0]  # conv, norm, ReLU
        fpn_dim = fusion_block[0].in_channels // len(self.in_channels)
        self.conv_main, self.upsampled_conv = _split_fusion(
            fusion_block[0], fpn_dim, [fpn_dim] * (len(self.in_channels) - 1))
        self.post = nn.Sequential(*fusion_block[1:], decoder.conv_last[1])

    def forward(self, conv_out: Sequence[torch.Tensor]) -> torch.Tensor:
        """Class scores ``(B, num_class, h, w)``, equal to the UPerNet decoder's."""
        finest, *coarser = self._pyramid(self, conv_out)
        return self.post(_fuse(self.conv_main, self.upsampled_conv, finest, coarser))


def factor_decoders(module: nn.Module, types: tuple[type, ...] | None = None) -> int:
    """Replaces every decoder inside ``module`` that has a factored inference form (PPM,
    UPerNet: their ``factored_inference_form()``) by that form, in place.

    For inference only: the result has no deep-supervision head and no training forward.

    Args:
        module: holds the decoders (e.g. a segmentation module).
        types: replace only decoders of these classes (default: all that have the form).

    Returns:
        the number of decoders replaced.
    """
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            make = getattr(child, "factored_inference_form", None)
            if make is None or (types is not None and not isinstance(child, types)):
                continue
            setattr(parent, name, make())
            count += 1
    return count
