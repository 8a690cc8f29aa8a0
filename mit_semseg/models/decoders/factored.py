"""Inference forms of the PPM and UPerNet heads that never convolve an upsampled map.

Both heads end in a 3x3 convolution over a concatenation that holds bilinearly upsampled maps:
PPM's fusion convolution reads ``conv5`` next to its pooled branches (1 to 6 pixels wide),
UPerNet's reads the finest FPN map next to the three coarser ones upsampled 2x, 4x and 8x.
Convolution is linear, so the part that reads an upsampled map ``up(m)`` can be computed at
``m``'s own size (:class:`UpsampledConv3x3`): apply each of the kernel's 9 taps ``W_kl`` to
``m`` (a matrix product on ``m``'s pixels, ``f^2`` times fewer than the output's for an
``f``-times upsampling), then resample with bilinear matrices shifted by the tap offsets
(``sum_k R_k (sum_l W_kl m C_l^T)``, zero rows where a tap reads the padding). The result equals
the convolution of the concatenation up to float rounding; what it saves:

* PPM: the fusion convolution's pooled-branch half (4 x 512 of ResNet-50's 2048 + 2048 input
  channels).
* UPerNet: three quarters of the final fusion convolution, which reads 2048 channels at a
  quarter of the image size and is the network's largest layer.

UPerNet's own pyramid pooling cannot be factored this way (its branches apply ReLU after
upsampling), and is small anyway. The factored heads serve inference only: no training
forward, no deep-supervision head. :func:`factor_decoders` installs them;
:func:`mit_semseg.inference.fast_path.optimize_for_inference` calls it (``MODEL.fast_inference``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mit_semseg.nn.resample import bilinear_matrix

from .ppm import PPM
from .upernet import UPerNet

__all__ = ["FactoredPPMDecoder", "FactoredUPerNetDecoder", "UpsampledConv3x3",
           "factor_decoders"]


def _shifted_bilinear(size: int, out_size: int, like: torch.Tensor) -> torch.Tensor:
    """``(3, out_size, size)``: the bilinear matrix with its output shifted by -1, 0 and 1."""
    matrix = bilinear_matrix(size, out_size, like)
    padded = F.pad(matrix, (0, 0, 1, 1))
    return torch.stack([padded[k:k + out_size] for k in range(3)])


class UpsampledConv3x3(nn.Module):
    """``sum_i conv3x3(up(x_i), W_i)`` (zero padding, stride 1, no bias) at the inputs' sizes.

    Args:
        weights: one ``(out, in_i, 3, 3)`` kernel per input map.
    """

    def __init__(self, weights: Sequence[torch.Tensor]) -> None:
        super().__init__()
        self.out_channels = int(weights[0].shape[0])
        for index, weight in enumerate(weights):
            if weight.shape[0] != self.out_channels or weight.shape[2:] != (3, 3):
                raise ValueError(f"expected (out={self.out_channels}, in, 3, 3) kernels, got "
                                 f"{tuple(weight.shape)} for input {index}")
            # rows ordered (tap row k, tap column l, output channel)
            taps = weight.detach().permute(2, 3, 0, 1).reshape(9 * self.out_channels, -1)
            self.register_buffer(f"taps_{index}", taps.contiguous())
        self.num_inputs = len(weights)

    # Eager under torch.compile: the resampling matrices are built from the sizes, which would
    # make every new input size a recompilation.
    @torch.compiler.disable
    def forward(self, maps: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        """``(B, out, H, W)`` for ``size = (H, W)``, in NCHW layout."""
        if len(maps) != self.num_inputs:
            raise ValueError(f"expected {self.num_inputs} maps, got {len(maps)}")
        height, width = int(size[0]), int(size[1])
        out = self.out_channels
        rows, columns = [], []
        for index, x in enumerate(maps):
            batch, _, h, w = x.shape
            like = x if x.dtype in (torch.float32, torch.float64) else x.float()
            taps = getattr(self, f"taps_{index}") @ x.flatten(2)  # (B, 9 * out, h * w)
            taps = taps.reshape(batch, 3, 3, out, h, w).permute(0, 1, 3, 4, 2, 5)
            taps = taps.reshape(batch, 3, out, h, 3 * w)  # (B, k, out, p, (l, q))
            col = _shifted_bilinear(w, width, like).permute(0, 2, 1).reshape(3 * w, width)
            partial = taps @ col.to(taps.dtype)  # (B, k, out, p, W)
            columns.append(partial.permute(0, 2, 1, 3, 4).reshape(batch, out, 3 * h, width))
            row = _shifted_bilinear(h, height, like)  # (k, H, p)
            rows.append(row.permute(1, 0, 2).reshape(height, 3 * h))  # (H, (k, p))
        row_matrix = torch.cat(rows, 1)
        return row_matrix.to(columns[0].dtype) @ torch.cat(columns, 2)


def _split_fusion(fusion: nn.Module, direct_channels: int, upsampled_channels: Sequence[int]
                  ) -> tuple[nn.Conv2d, UpsampledConv3x3]:
    """The 3x3 ``fusion`` convolution as (a convolution of its first ``direct_channels``,
    the closed form for the upsampled inputs that follow)."""
    if (not isinstance(fusion, nn.Conv2d) or fusion.kernel_size != (3, 3)
            or fusion.padding != (1, 1) or fusion.stride != (1, 1)
            or fusion.dilation != (1, 1) or fusion.groups != 1):
        raise ValueError(f"cannot factor a head whose fusion convolution is {fusion}")
    weight = fusion.weight.detach()
    direct = nn.Conv2d(direct_channels, fusion.out_channels, 3, padding=1,
                       bias=fusion.bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        direct.weight.copy_(weight[:, :direct_channels])
        if fusion.bias is not None:
            direct.bias.copy_(fusion.bias)
    bounds = torch.tensor([direct_channels, *upsampled_channels]).cumsum(0).tolist()
    upsampled = UpsampledConv3x3([weight[:, start:end]
                                  for start, end in zip(bounds[:-1], bounds[1:])])
    return direct, upsampled


def _fuse(direct: nn.Module, upsampled: UpsampledConv3x3, x: torch.Tensor,
          small_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    fused = direct(x)  # keeps x's memory layout
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


def factor_decoders(module: nn.Module) -> int:
    """Replaces every PPM and UPerNet decoder inside ``module`` by its factored form, in place.

    For inference only: the result has no deep-supervision head and no training forward.

    Returns:
        the number of decoders replaced.
    """
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, PPM):
                setattr(parent, name, FactoredPPMDecoder(child))
            elif isinstance(child, UPerNet):
                setattr(parent, name, FactoredUPerNetDecoder(child))
            else:
                continue
            count += 1
    return count
