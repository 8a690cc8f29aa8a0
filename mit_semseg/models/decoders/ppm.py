"""PPM decoder (PSPNet head) on the last encoder map.

Registered as ``ppm`` and ``ppm_deepsup`` (adds ``cbr_deepsup``, ``dropout_deepsup`` and
``conv_last_deepsup`` on the second-to-last map, or on the only map of a single-map encoder
such as ``hrnetv2``). Output stride = the encoder's last stride.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn as nn

from ..registry import DECODERS
from .base import SegmentationDecoder
from .blocks import (
    NormLayer,
    init_decoder_weights,
    pyramid_pooling_branch,
    resolve_in_channels,
    upsample,
)

__all__ = ["PPM"]

PPM_CHANNELS = 512  # width of every pooling branch and of the fused map (fixed in the original)


class PPM(SegmentationDecoder):
    """The original's ``PPM`` / ``PPMDeepsup``.

    Args:
        num_class: number of classes.
        fc_dim: width of the last encoder map; optional when ``in_channels`` is given.
        use_softmax: see :meth:`SegmentationDecoder.forward`.
        pool_scales: output sizes of the pyramid pooling branches.
        deep_sup: add the auxiliary head.
        in_channels: the encoder's ``out_channels`` (default ``[fc_dim // 2, fc_dim]``).
        norm_layer: normalisation layer constructor.
    """

    def __init__(self, num_class: int = 150, fc_dim: int | None = 4096,
                 use_softmax: bool = False, pool_scales: Sequence[int] = (1, 2, 3, 6), *,
                 deep_sup: bool = False, in_channels: Sequence[int] | None = None,
                 norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        widths = resolve_in_channels(fc_dim, in_channels, lambda c: [c // 2, c])
        super().__init__(num_class, widths, use_softmax, deep_sup)
        top = widths[-1]
        self.ppm = nn.ModuleList(
            pyramid_pooling_branch(top, PPM_CHANNELS, scale, norm_layer) for scale in pool_scales
        )
        self.conv_last = nn.Sequential(
            nn.Conv2d(top + len(pool_scales) * PPM_CHANNELS, PPM_CHANNELS, 3, padding=1,
                      bias=False),
            norm_layer(PPM_CHANNELS),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.1),
            nn.Conv2d(PPM_CHANNELS, num_class, 1),
        )
        if deep_sup:
            self._build_deep_sup_head(top // 4, norm_layer, dropout=0.1)
        init_decoder_weights(self)
        self._finish_init()

    def logits(self, conv_out: Sequence[torch.Tensor]) -> torch.Tensor:
        conv5 = self._check_map(conv_out, -1)  # (B, C, h, w)
        size = conv5.shape[2:]
        pyramid = [conv5] + [upsample(branch(conv5), size) for branch in self.ppm]
        return self.conv_last(torch.cat(pyramid, 1))


DECODERS.register("ppm", partial(PPM, deep_sup=False))
DECODERS.register("ppm_deepsup", partial(PPM, deep_sup=True))
