"""PPM decoder (PSPNet head) on the last encoder map.

Registered as ``ppm`` and ``ppm_deepsup`` (adds ``cbr_deepsup``, ``dropout_deepsup`` and
``conv_last_deepsup`` on the second-to-last map, or on the only map of a single-map encoder
such as ``hrnetv2``). Output resolution: the last encoder map's.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn as nn

from ..layers import AdaptiveAvgPool2d, NormLayer, conv_norm, init_weights, upsample
from ..registry import DECODERS
from .base import SegmentationDecoder

__all__ = ["PPM", "PPM_CHANNELS"]

PPM_CHANNELS = 512  # width of every pooling branch and of the fused map (fixed in the original)


class PPM(SegmentationDecoder):
    """The original's ``PPM`` / ``PPMDeepsup``.

    Args:
        num_class, in_channels, fc_dim: see :class:`SegmentationDecoder`.
        pool_scales: output sizes of the pyramid pooling branches.
        deep_sup: add the auxiliary head.
        norm_layer: normalisation layer constructor.
    """

    output_index = -1

    def __init__(self, num_class: int = 150, in_channels: Sequence[int] | None = None, *,
                 fc_dim: int | None = None, pool_scales: Sequence[int] = (1, 2, 3, 6),
                 deep_sup: bool = False, norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__(num_class, in_channels, fc_dim, deep_sup)
        top = self.in_channels[-1]
        # Each branch: pool to scale x scale, then 1x1 conv-norm-ReLU (keys "1.*", "2.*").
        self.ppm = nn.ModuleList(
            nn.Sequential(AdaptiveAvgPool2d(scale),
                          *conv_norm(top, PPM_CHANNELS, 1, norm_layer=norm_layer))
            for scale in pool_scales
        )
        self.conv_last = nn.Sequential(
            *conv_norm(top + len(pool_scales) * PPM_CHANNELS, PPM_CHANNELS, 3,
                       norm_layer=norm_layer),
            nn.Dropout2d(0.1),
            nn.Conv2d(PPM_CHANNELS, num_class, 1),
        )
        if deep_sup:
            self._build_deep_sup_head(top // 4, norm_layer, dropout=0.1)
        init_weights(self, fan="in", norm_bias=1e-4)

    def forward(self, conv_out: Sequence[torch.Tensor]) -> torch.Tensor:
        conv5 = self._check_map(conv_out, -1)  # (B, C, h, w)
        size = conv5.shape[2:]
        pyramid = [conv5] + [upsample(branch(conv5), size) for branch in self.ppm]
        return self.conv_last(torch.cat(pyramid, 1))


DECODERS.register("ppm", partial(PPM, deep_sup=False))
DECODERS.register("ppm_deepsup", partial(PPM, deep_sup=True))
