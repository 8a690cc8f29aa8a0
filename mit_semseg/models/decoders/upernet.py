"""UPerNet decoder: a pyramid pooling module on the last map plus an FPN over all maps.

Registered as ``upernet`` (FPN width 512), ``upernet_lite`` (256) and ``upernet_deepsup``
(width 512 plus ``cbr_deepsup`` + ``conv_last_deepsup`` on the second-to-last map, or on the
only map of a single-map encoder). The lateral widths come from the encoder (``in_channels``),
so it works with every encoder; the original fixed them to ResNet-50's (256, 512, 1024, 2048),
which is still the default when only ``fc_dim`` is given.
Output stride = the encoder's first stride (4 for all encoders here).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn as nn

from mit_semseg.nn.deterministic import AdaptiveAvgPool2d

from ..registry import DECODERS
from .base import SegmentationDecoder
from .blocks import (
    NormLayer,
    conv1x1_bn_relu,
    conv3x3_bn_relu,
    init_decoder_weights,
    is_pointwise_affine,
    resolve_in_channels,
    upsample,
)

__all__ = ["UPerNet"]

PPM_CHANNELS = 512


def _resnet50_widths(fc_dim: int) -> list[int]:
    return [256, 512, 1024, fc_dim]


class UPerNet(SegmentationDecoder):
    """The original's ``UPerNet`` with encoder-driven widths and optional deep supervision.

    Args:
        num_class: number of classes.
        fc_dim: width of the last encoder map; optional when ``in_channels`` is given.
        use_softmax: see :meth:`SegmentationDecoder.forward`.
        pool_scales: output sizes of the pyramid pooling branches.
        fpn_dim: width of the FPN maps.
        deep_sup: add the auxiliary head (on ``conv_out[-2]``, width ``fc_dim // 4``).
        fast_pooling: in eval mode with BatchNorm, run the pooling branches' conv and norm at
            the pooled size (equal up to float rounding, much cheaper); off by default so the
            outputs match the original's to 1e-5.
        in_channels: the encoder's ``out_channels`` (default ``[256, 512, 1024, fc_dim]``).
        norm_layer: normalisation layer constructor.
    """

    def __init__(self, num_class: int = 150, fc_dim: int | None = 4096,
                 use_softmax: bool = False, pool_scales: Sequence[int] = (1, 2, 3, 6),
                 fpn_dim: int = 256, *, deep_sup: bool = False, fast_pooling: bool = False,
                 in_channels: Sequence[int] | None = None,
                 norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        widths = resolve_in_channels(fc_dim, in_channels, _resnet50_widths)
        super().__init__(num_class, widths, use_softmax, deep_sup)
        self.fast_pooling = fast_pooling
        top = widths[-1]
        self.ppm_pooling = nn.ModuleList(AdaptiveAvgPool2d(scale) for scale in pool_scales)
        self.ppm_conv = nn.ModuleList(
            conv1x1_bn_relu(top, PPM_CHANNELS, norm_layer) for _ in pool_scales
        )
        self.ppm_last_conv = conv3x3_bn_relu(top + len(pool_scales) * PPM_CHANNELS, fpn_dim, 1,
                                             norm_layer)
        self.fpn_in = nn.ModuleList(conv1x1_bn_relu(c, fpn_dim, norm_layer) for c in widths[:-1])
        # The extra Sequential reproduces the original's key nesting (fpn_out.i.0.0.weight).
        self.fpn_out = nn.ModuleList(
            nn.Sequential(conv3x3_bn_relu(fpn_dim, fpn_dim, 1, norm_layer)) for _ in widths[:-1]
        )
        self.conv_last = nn.Sequential(
            conv3x3_bn_relu(len(widths) * fpn_dim, fpn_dim, 1, norm_layer),
            nn.Conv2d(fpn_dim, num_class, 1),
        )
        if deep_sup:
            self._build_deep_sup_head(top // 4, norm_layer, dropout=None)
        init_decoder_weights(self)
        self._finish_init()

    def _pooling_branch(self, pool: nn.Module, conv: nn.Sequential,
                        conv5: torch.Tensor) -> torch.Tensor:
        size = conv5.shape[2:]
        if self.training or not self.fast_pooling or not is_pointwise_affine(conv[1]):
            # The original's order: upsample the pooled map, then conv-norm-ReLU at full size.
            # Kept whenever the norm depends on the batch, so training matches it exactly.
            return conv(upsample(pool(conv5), size))
        # Same result, cheaper: a 1x1 conv and an eval-mode BatchNorm are per-pixel affine maps
        # and bilinear weights sum to 1, so they commute with the upsampling; ReLU does not.
        return conv[2](upsample(conv[1](conv[0](pool(conv5))), size))

    def logits(self, conv_out: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(conv_out) != len(self.in_channels):
            raise ValueError(
                f"UPerNet was built for {len(self.in_channels)} encoder maps "
                f"(in_channels {self.in_channels}) but got {len(conv_out)}; build it with "
                "in_channels=encoder.out_channels"
            )
        maps = [self._check_map(conv_out, i) for i in range(len(conv_out))]
        conv5 = maps[-1]
        pyramid = [conv5] + [
            self._pooling_branch(pool, conv, conv5)
            for pool, conv in zip(self.ppm_pooling, self.ppm_conv)
        ]
        f = self.ppm_last_conv(torch.cat(pyramid, 1))
        fpn_maps = [f]
        for i in reversed(range(len(maps) - 1)):
            lateral = self.fpn_in[i](maps[i])
            f = lateral + upsample(f, lateral.shape[2:])  # top-down path
            fpn_maps.append(self.fpn_out[i](f))
        fpn_maps.reverse()  # highest resolution first
        size = fpn_maps[0].shape[2:]
        fused = torch.cat([fpn_maps[0]] + [upsample(p, size) for p in fpn_maps[1:]], 1)
        return self.conv_last(fused)  # (B, num_class, H/4, W/4)


DECODERS.register("upernet", partial(UPerNet, fpn_dim=512))
DECODERS.register("upernet_lite", partial(UPerNet, fpn_dim=256))
DECODERS.register("upernet_deepsup", partial(UPerNet, fpn_dim=512, deep_sup=True))
