"""MobileNetV2 encoder (the original's "tonylins" variant), dilated.

Contract: ``forward(x)`` returns five maps, the outputs of ``features[2]``, ``features[4]``,
``features[7]``, ``features[14]`` (the *first* block of each of the 24/32/64/160-channel stages,
as the original taps them) and the last block ``features[17]``:

=================== =========================== ==================
name                ``out_channels``            ``strides``
=================== =========================== ==================
mobilenetv2dilated  [24, 32, 64, 160, 320]      [4, 8, 8, 8, 8]
mobilenetv2dilated16 [24, 32, 64, 160, 320]     [4, 8, 16, 16, 16]
=================== =========================== ==================

``features[0]`` is a 3x3 stride-2 conv + norm + ReLU6; ``features[1..17]`` are inverted
residual blocks; the classifier's final 1x1 conv (``features[18]``) is not built.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn

from ..layers import NormLayer, init_weights
from ..registry import ENCODERS
from .stages import dilation_plan

__all__ = ["MobileNetV2Encoder", "INVERTED_RESIDUAL_SETTING"]

# (expansion t, channels c, repeats n, stride s) of each stage, as in the MobileNetV2 paper.
INVERTED_RESIDUAL_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
TAP_INDICES = (2, 4, 7, 14)


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise 3x3, project (1x1); residual when shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int, dilation: int,
                 norm_layer: NormLayer) -> None:
        super().__init__()
        hidden = round(in_ch * expand_ratio)
        self.use_res_connect = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [nn.Conv2d(in_ch, hidden, 1, bias=False), norm_layer(hidden),
                       nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, padding=dilation, dilation=dilation,
                      groups=hidden, bias=False),
            norm_layer(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            norm_layer(out_ch),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2Encoder(nn.Module):
    """MobileNetV2 feature extractor with dilation instead of the last strides.

    Args:
        output_stride: 8 (the original's ``mobilenetv2dilated``), 16 or 32.
        norm_layer: normalisation layer constructor.

    Attributes:
        out_channels: channels of each returned map.
        strides: input-to-map downsampling factor of each returned map.
    """

    def __init__(self, output_stride: int = 8, norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        self.pretrained_name = "mobilenetv2"  # which ImageNet weights file fits
        block_specs = []  # (in, out, stride, expansion) per inverted residual block
        in_ch = 32
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            for i in range(n):
                block_specs.append((in_ch, c, s if i == 0 else 1, t))
                in_ch = c
        plan = dilation_plan([spec[2] for spec in block_specs], input_stride=2,
                             output_stride=output_stride)
        layers: list[nn.Module] = [nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1, bias=False), norm_layer(32), nn.ReLU6(inplace=True)
        )]
        for (b_in, b_out, _, t), step in zip(block_specs, plan):
            # A block has one 3x3 (depthwise) conv, the one that carries the stride.
            layers.append(InvertedResidual(b_in, b_out, step.stride, t, step.dilation_first,
                                           norm_layer))
        self.features = nn.Sequential(*layers)
        taps = (*TAP_INDICES, len(layers) - 1)
        self._taps = taps
        self.out_channels = [block_specs[i - 1][1] for i in taps]
        self.strides = [plan[i - 1].output_stride for i in taps]
        # The original uses the full fan-out, also for depthwise convolutions.
        init_weights(self, fan="out")

    def forward(self, x: torch.Tensor, return_feature_maps: bool = True) -> list[torch.Tensor]:
        """Encode ``x`` (B, 3, H, W) into the five tapped maps (``[last]`` if not
        ``return_feature_maps``, as the original)."""
        features = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self._taps:
                features.append(x)
        return features if return_feature_maps else [x]


ENCODERS.register("mobilenetv2dilated", partial(MobileNetV2Encoder, output_stride=8))
ENCODERS.register("mobilenetv2dilated16", partial(MobileNetV2Encoder, output_stride=16))
