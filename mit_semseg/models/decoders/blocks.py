"""Building blocks shared by the decoders."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from mit_semseg.nn.deterministic import AdaptiveAvgPool2d, interpolate_bilinear

__all__ = [
    "NormLayer",
    "conv3x3_bn_relu",
    "conv1x1_bn_relu",
    "pyramid_pooling_branch",
    "upsample",
    "init_decoder_weights",
    "resolve_in_channels",
]

NormLayer = Callable[[int], nn.Module]


def conv3x3_bn_relu(in_planes: int, out_planes: int, stride: int = 1,
                    norm_layer: NormLayer = nn.BatchNorm2d) -> nn.Sequential:
    """3x3 conv (no bias) -> norm -> ReLU; keys ``0.weight``, ``1.*`` as in the original."""
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False),
        norm_layer(out_planes),
        nn.ReLU(inplace=True),
    )


def conv1x1_bn_relu(in_planes: int, out_planes: int,
                    norm_layer: NormLayer = nn.BatchNorm2d) -> nn.Sequential:
    """1x1 conv (no bias) -> norm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, bias=False),
        norm_layer(out_planes),
        nn.ReLU(inplace=True),
    )


def pyramid_pooling_branch(in_planes: int, out_planes: int, scale: int,
                           norm_layer: NormLayer = nn.BatchNorm2d) -> nn.Sequential:
    """PSPNet branch: adaptive average pooling to ``scale`` x ``scale``, then 1x1 conv-norm-ReLU.

    Keys ``1.weight`` and ``2.*`` (index 0 is the parameter-free pooling).
    """
    return nn.Sequential(AdaptiveAvgPool2d(scale), *conv1x1_bn_relu(in_planes, out_planes,
                                                                    norm_layer))


def upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize with ``align_corners=False`` (the only mode the models use); a
    deterministic form in deterministic CUDA training (:mod:`mit_semseg.nn.deterministic`)."""
    return interpolate_bilinear(x, size)


def is_pointwise_affine(norm: nn.Module) -> bool:
    """Whether ``norm`` currently maps each pixel by a fixed affine map (BatchNorm in eval)."""
    return isinstance(norm, _BatchNorm) and not norm.training and norm.running_mean is not None


def init_decoder_weights(module: nn.Module) -> None:
    """The original decoder init: Kaiming-normal conv weights, norm weight 1 and bias 1e-4."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, (_BatchNorm, nn.GroupNorm)) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.constant_(m.bias, 1e-4)


def resolve_in_channels(fc_dim: int | None, in_channels: Sequence[int] | None,
                        default: Callable[[int], list[int]]) -> list[int]:
    """Channel widths of the encoder maps a decoder reads.

    Args:
        fc_dim: the original's width of the last map (``MODEL.fc_dim``), or ``None``.
        in_channels: the encoder's ``out_channels``, or ``None`` to derive them from ``fc_dim``
            the way the original did.
        default: ``fc_dim -> widths`` used when ``in_channels`` is not given.

    Raises:
        ValueError: neither is given, or ``fc_dim`` contradicts ``in_channels[-1]``.
    """
    if in_channels is None:
        if fc_dim is None:
            raise ValueError("give the decoder fc_dim or in_channels (the encoder's out_channels)")
        return default(int(fc_dim))
    widths = [int(c) for c in in_channels]
    if not widths:
        raise ValueError("in_channels must list at least one encoder map width")
    if fc_dim is not None and int(fc_dim) != widths[-1]:
        raise ValueError(
            f"fc_dim={fc_dim} does not match the encoder's last feature width {widths[-1]} "
            f"(encoder out_channels {widths}); set MODEL.fc_dim to {widths[-1]}"
        )
    return widths


def softmax_over_classes(x: torch.Tensor) -> torch.Tensor:
    """``F.softmax(x, dim=1)`` that keeps a channels-last ``x`` channels-last.

    On CPU, softmax over dim 1 of a channels-last tensor first copies it to the default
    layout; seen as NHWC, the class axis is the contiguous last one and needs no copy.
    Half-precision logits (autocast) give float32 probabilities, so that they sum to 1.
    """
    dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else None
    if (x.dim() == 4 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)):
        return F.softmax(x.permute(0, 2, 3, 1), dim=-1, dtype=dtype).permute(0, 3, 1, 2)
    return F.softmax(x, dim=1, dtype=dtype)
