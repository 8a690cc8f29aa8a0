"""Deep-stem ResNet-18/50/101 and ResNeXt-101 encoders (one parametrised definition).

Contract: ``forward(x)`` returns the outputs of ``layer1..layer4``, highest resolution first.

========== ============================= ===========================================
depth      ``out_channels``              ``strides`` for output_stride 32 / 16 / 8
========== ============================= ===========================================
ResNet-18  [64, 128, 256, 512]           [4, 8, 16, 32] / [4, 8, 16, 16] / [4, 8, 8, 8]
ResNet-50  [256, 512, 1024, 2048]        same
ResNet-101 [256, 512, 1024, 2048]        same
ResNeXt-101 (32 groups) [256, 512, 1024, 2048]  same
========== ============================= ===========================================

The stem is the original's: three 3x3 convolutions (3->64 stride 2, 64->64, 64->128) and a 3x3
max-pool, so ``layer1`` receives 128 channels. Smaller output strides replace the stride of a
stage by dilation exactly like the original's ``ResnetDilated``: the first block of a dilated
stage keeps the previous dilation on its strided convolution, every other 3x3 convolution of
the stage uses the new one. Attribute names reproduce the original's state-dict keys.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn

from ..layers import NormLayer, init_weights
from ..registry import ENCODERS
from .stages import dilation_plan

__all__ = ["ResNetEncoder", "RESNET_SPECS"]

# depth -> (block kind, blocks per stage, bottleneck widths per stage, expansion, groups)
RESNET_SPECS: dict[str, tuple[str, list[int], list[int], int, int]] = {
    "resnet18": ("basic", [2, 2, 2, 2], [64, 128, 256, 512], 1, 1),
    "resnet50": ("bottleneck", [3, 4, 6, 3], [64, 128, 256, 512], 4, 1),
    "resnet101": ("bottleneck", [3, 4, 23, 3], [64, 128, 256, 512], 4, 1),
    "resnext101": ("bottleneck", [3, 4, 23, 3], [128, 256, 512, 1024], 2, 32),
}


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1, groups: int = 1):
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation,
                     groups=groups, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18)."""

    def __init__(self, in_ch: int, width: int, out_ch: int, stride: int, dilation_first: int,
                 dilation: int, groups: int, downsample: nn.Module | None,
                 norm_layer: NormLayer) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, width, stride, dilation_first)
        self.bn1 = norm_layer(width)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(width, out_ch, 1, dilation)
        self.bn2 = norm_layer(out_ch)
        self.relu2 = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, grouped for ResNeXt), 1x1 expand, plus a residual."""

    def __init__(self, in_ch: int, width: int, out_ch: int, stride: int, dilation_first: int,
                 dilation: int, groups: int, downsample: nn.Module | None,
                 norm_layer: NormLayer) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = norm_layer(width)
        # The 3x3 conv carries the stride, so in a dilated stage it is the "first" conv.
        self.conv2 = _conv3x3(width, width, stride, dilation_first, groups)
        self.bn2 = norm_layer(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = norm_layer(out_ch)
        self.relu1 = nn.ReLU(inplace=True)
        self.relu2 = nn.ReLU(inplace=True)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + identity)


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNetEncoder(nn.Module):
    """Deep-stem ResNet / ResNeXt returning the four stage outputs.

    Args:
        arch: one of :data:`RESNET_SPECS` (``resnet18``, ``resnet50``, ``resnet101``,
            ``resnext101``).
        output_stride: 32 (plain), 16 or 8 (dilated like the original's ``ResnetDilated``).
        norm_layer: normalisation layer constructor, called with the channel count.

    Attributes:
        out_channels: channels of each returned map.
        strides: input-to-map downsampling factor of each returned map.
    """

    def __init__(self, arch: str = "resnet50", output_stride: int = 32,
                 norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        if arch not in RESNET_SPECS:
            raise ValueError(f"unknown ResNet variant {arch!r}; choose from {sorted(RESNET_SPECS)}")
        kind, depths, widths, expansion, groups = RESNET_SPECS[arch]
        self.arch = arch
        self.pretrained_name = arch  # which ImageNet weights file fits (see pretrained.py)
        self.conv1 = _conv3x3(3, 64, stride=2)
        self.bn1 = norm_layer(64)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(64, 64)
        self.bn2 = norm_layer(64)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = _conv3x3(64, 128)
        self.bn3 = norm_layer(128)
        self.relu3 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        plan = dilation_plan([1, 2, 2, 2], input_stride=4, output_stride=output_stride)
        block = _BLOCKS[kind]
        in_ch = 128
        self.out_channels: list[int] = []
        self.strides: list[int] = []
        for index, (n_blocks, width, step) in enumerate(zip(depths, widths, plan)):
            out_ch = width * expansion
            downsample = None
            if step.stride != 1 or in_ch != out_ch:
                downsample = nn.Sequential(
                    nn.Conv2d(in_ch, out_ch, 1, stride=step.stride, bias=False),
                    norm_layer(out_ch),
                )
            blocks = [block(in_ch, width, out_ch, step.stride, step.dilation_first,
                            step.dilation, groups, downsample, norm_layer)]
            blocks += [
                block(out_ch, width, out_ch, 1, step.dilation, step.dilation, groups, None,
                      norm_layer)
                for _ in range(1, n_blocks)
            ]
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            in_ch = out_ch
            self.out_channels.append(out_ch)
            self.strides.append(step.output_stride)
        init_weights(self, fan="out_per_group")  # the original's ImageNet-style init

    def forward(self, x: torch.Tensor, return_feature_maps: bool = True) -> list[torch.Tensor]:
        """Encode ``x`` (B, 3, H, W).

        Args:
            x: normalised images.
            return_feature_maps: ``False`` returns only the last map, as the original did.

        Returns:
            ``[layer1, layer2, layer3, layer4]`` outputs, (B, out_channels[i], ~H/s, ~W/s).
        """
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.maxpool(x)  # (B, 128, H/4, W/4)
        features = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            features.append(x)
        return features if return_feature_maps else [x]


for _arch in RESNET_SPECS:
    ENCODERS.register(_arch, partial(ResNetEncoder, _arch, output_stride=32))
    ENCODERS.register(f"{_arch}dilated", partial(ResNetEncoder, _arch, output_stride=8))
    ENCODERS.register(f"{_arch}dilated16", partial(ResNetEncoder, _arch, output_stride=16))
