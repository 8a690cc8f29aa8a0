"""UPerNet decoder: a pyramid pooling module on the last map plus an FPN over all maps.

Registered as ``upernet`` (FPN width 512), ``upernet_lite`` (256) and ``upernet_deepsup``
(width 512 plus ``cbr_deepsup`` + ``conv_last_deepsup`` on the second-to-last map, or on the
only map of a single-map encoder). The lateral widths come from the encoder (``in_channels``),
so it works with every encoder; the original fixed them to ResNet-50's (256, 512, 1024, 2048),
which is still the layout built from ``fc_dim`` alone.
Output resolution: the first (highest-resolution) encoder map's.

In training the fusion convolution's part over the three coarser FPN maps runs at their own
sizes (:func:`~mit_semseg.models.decoders.factored.fused_conv3x3`, ``factored_training``),
and the wide 3x3 convolutions in Winograd form where that is faster
(:mod:`mit_semseg.nn.winograd`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn as nn

from ..layers import (
    AdaptiveAvgPool2d,
    NormLayer,
    conv_norm,
    conv_norm_forward,
    init_weights,
    upsample,
)
from ..registry import DECODERS
from .base import SegmentationDecoder
from .factored import FactoredUPerNetDecoder, factored_now, fused_conv3x3
from .ppm import PPM_CHANNELS

__all__ = ["UPerNet"]


class UPerNet(SegmentationDecoder):
    """The original's ``UPerNet`` with encoder-driven widths and optional deep supervision.

    Args:
        num_class, in_channels, fc_dim: see :class:`SegmentationDecoder` (``fc_dim`` alone
            gives ResNet-50's lateral widths ``[256, 512, 1024, fc_dim]``).
        pool_scales: output sizes of the pyramid pooling branches.
        fpn_dim: width of the FPN maps.
        deep_sup: add the auxiliary head (on ``conv_out[-2]``, width ``in_channels[-1] // 4``).
        norm_layer: normalisation layer constructor.
        factored_training: in training (and whenever autograd records), convolve the coarser
            FPN maps at their own sizes instead of upsampling them first, and run the wide 3x3
            convolutions (fusion, FPN outputs, pyramid pooling) in Winograd form on CPU in
            float32 where that is faster: the same function of the same weights up to float
            rounding, for about two fifths fewer FLOPs per ResNet-50 training step. An
            attribute, which may be switched at any time; ``False`` is the original's
            arithmetic.
    """

    output_index = 0

    def __init__(self, num_class: int = 150, in_channels: Sequence[int] | None = None, *,
                 fc_dim: int | None = None, pool_scales: Sequence[int] = (1, 2, 3, 6),
                 fpn_dim: int = 256, deep_sup: bool = False,
                 norm_layer: NormLayer = nn.BatchNorm2d, factored_training: bool = True) -> None:
        super().__init__(num_class, in_channels, fc_dim, deep_sup)
        self.factored_training = bool(factored_training)
        widths = self.in_channels
        top = widths[-1]
        self.ppm_pooling = nn.ModuleList(AdaptiveAvgPool2d(scale) for scale in pool_scales)
        self.ppm_conv = nn.ModuleList(
            conv_norm(top, PPM_CHANNELS, 1, norm_layer=norm_layer) for _ in pool_scales
        )
        self.ppm_last_conv = conv_norm(top + len(pool_scales) * PPM_CHANNELS, fpn_dim, 3,
                                       norm_layer=norm_layer)
        self.fpn_in = nn.ModuleList(conv_norm(c, fpn_dim, 1, norm_layer=norm_layer)
                                    for c in widths[:-1])
        # The extra Sequential reproduces the original's key nesting (fpn_out.i.0.0.weight).
        self.fpn_out = nn.ModuleList(
            nn.Sequential(conv_norm(fpn_dim, fpn_dim, 3, norm_layer=norm_layer))
            for _ in widths[:-1]
        )
        self.conv_last = nn.Sequential(
            conv_norm(len(widths) * fpn_dim, fpn_dim, 3, norm_layer=norm_layer),
            nn.Conv2d(fpn_dim, num_class, 1),
        )
        if deep_sup:
            self._build_deep_sup_head(top // 4, norm_layer, dropout=None)
        init_weights(self, fan="in", norm_bias=1e-4)

    @staticmethod
    def original_in_channels(fc_dim: int) -> list[int]:
        """The original's UPerNet assumed ResNet-50's lateral widths whatever the encoder."""
        return [256, 512, 1024, fc_dim]

    def forward(self, conv_out: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(conv_out) != len(self.in_channels):
            raise ValueError(
                f"UPerNet was built for {len(self.in_channels)} encoder maps "
                f"(in_channels {self.in_channels}) but got {len(conv_out)}; build it with "
                "in_channels=encoder.out_channels"
            )
        maps = [self._check_map(conv_out, i) for i in range(len(conv_out))]
        finest, *coarser = self.feature_pyramid(maps)
        if factored_now(self):
            fusion = self.conv_last[0]  # conv, norm, ReLU
            fused = fusion[1:](fused_conv3x3(fusion[0], finest, coarser))
            return self.conv_last[1](fused)
        size = finest.shape[2:]
        fused = torch.cat([finest] + [upsample(p, size) for p in coarser], 1)
        return self.conv_last(fused)  # (B, num_class, H/s0, W/s0)

    def feature_pyramid(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The FPN maps (``fpn_dim`` channels each) at the encoder maps' sizes, finest first.

        Uses only the pyramid pooling and FPN layers, so the factored inference head
        (:mod:`mit_semseg.models.decoders.factored`) shares it.
        """
        conv5 = maps[-1]
        size = conv5.shape[2:]
        pyramid = [conv5] + [conv(upsample(pool(conv5), size))
                             for pool, conv in zip(self.ppm_pooling, self.ppm_conv)]
        fewer_flops = factored_now(self)  # Winograd where it pays (conv_norm_forward)
        f = conv_norm_forward(self.ppm_last_conv, torch.cat(pyramid, 1), fewer_flops)
        fpn_maps = [f]
        for i in reversed(range(len(maps) - 1)):
            lateral = self.fpn_in[i](maps[i])
            f = lateral + upsample(f, lateral.shape[2:])  # top-down path
            fpn_maps.append(conv_norm_forward(self.fpn_out[i][0], f, fewer_flops))
        fpn_maps.reverse()  # highest resolution first
        return fpn_maps

    def factored_inference_form(self) -> FactoredUPerNetDecoder:
        """This decoder's inference form (sharing its layers), for
        :func:`~mit_semseg.models.decoders.factored.factor_decoders`."""
        return FactoredUPerNetDecoder(self)

DECODERS.register("upernet", partial(UPerNet, fpn_dim=512))
DECODERS.register("upernet_lite", partial(UPerNet, fpn_dim=256))
DECODERS.register("upernet_deepsup", partial(UPerNet, fpn_dim=512, deep_sup=True))
