"""Pieces shared by encoders and decoders: the norm-layer type, conv + norm (+ ReLU) and its
fewer-FLOP training forward, bilinear resizing, adaptive pooling and the one
weight-initialisation helper.

Resizing and pooling go through :mod:`mit_semseg.nn.deterministic_ops`, which uses PyTorch's kernels
except in deterministic CUDA training (``TRAIN.deterministic``), where their backward would
accumulate with atomic adds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Callable, Literal

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from mit_semseg.nn.deterministic_ops import AdaptiveAvgPool2d, interpolate_bilinear
from mit_semseg.nn.winograd import conv3x3

__all__ = ["AdaptiveAvgPool2d", "NormLayer", "conv_norm", "conv_norm_forward", "init_weights",
           "is_same_size_conv3x3", "upsample"]

# A normalisation layer constructor, called with the channel count (nn.BatchNorm2d, a
# synchronized BatchNorm, ``lambda c: nn.GroupNorm(32, c)``, ...).
NormLayer = Callable[[int], nn.Module]


def conv_norm(in_ch: int, out_ch: int, kernel: int, stride: int = 1,
              norm_layer: NormLayer = nn.BatchNorm2d, relu: bool = True) -> nn.Sequential:
    """``kernel`` x ``kernel`` conv (no bias, "same" padding) -> norm (-> ReLU).

    The submodule indices (``0`` conv, ``1`` norm) are part of the checkpoint format.
    """
    layers = [nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
              norm_layer(out_ch)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def conv_norm_forward(block: nn.Sequential, x: torch.Tensor, fewer_flops: bool
                      ) -> torch.Tensor:
    """``block(x)`` for a :func:`conv_norm` block; with ``fewer_flops`` a 3x3 convolution runs
    through :func:`mit_semseg.nn.winograd.conv3x3` (the Winograd form where it is faster: wide
    float32 convolutions on CPU), which equals it up to float rounding."""
    conv = block[0]
    if not (fewer_flops and is_same_size_conv3x3(conv)):
        return block(x)
    return block[1:](conv3x3(x, conv.weight, conv.bias))


def is_same_size_conv3x3(conv: nn.Module) -> bool:
    """Whether ``conv`` is a plain 3x3 convolution that keeps the map's size (stride 1, zero
    padding 1, no dilation, no groups): the one the factored heads and the Winograd form
    compute differently."""
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3)
            and conv.padding == (1, 1) and conv.stride == (1, 1) and conv.dilation == (1, 1)
            and conv.groups == 1 and conv.padding_mode == "zeros")


def upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of (B, C, h, w) to ``size`` with ``align_corners=False`` (the only mode
    the models use)."""
    return interpolate_bilinear(x, size)


def init_weights(module: nn.Module, fan: Literal["in", "out", "out_per_group"],
                 norm_bias: float = 0.0) -> None:
    """He-normal conv weights and constant norm parameters, over ``module`` and its children.

    Every conv weight is drawn from N(0, sqrt(2 / fan)), norm weights are set to 1 and norm
    biases to ``norm_bias``. The original initialised its parts differently, and checkpoints
    trained from scratch depend on it, hence the choices:

    Args:
        module: network to initialise in place.
        fan: ``"in"`` = ``k * k * in_channels / groups`` (the decoders, ``kaiming_normal_``);
            ``"out"`` = ``k * k * out_channels`` (MobileNetV2, depthwise convs counted in
            full); ``"out_per_group"`` = ``k * k * out_channels / groups`` (ResNet, ResNeXt).
        norm_bias: the decoders used 1e-4, the encoders 0.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            fans = {"in": k * m.in_channels // m.groups, "out": k * m.out_channels,
                    "out_per_group": k * m.out_channels // m.groups}
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fans[fan]))
        elif isinstance(m, (_BatchNorm, nn.GroupNorm)) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.constant_(m.bias, norm_bias)
