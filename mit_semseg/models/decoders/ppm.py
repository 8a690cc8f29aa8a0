"""PPM decoder (PSPNet head) on the last encoder map.

Registered as ``ppm`` and ``ppm_deepsup`` (adds ``cbr_deepsup``, ``dropout_deepsup`` and
``conv_last_deepsup`` on the second-to-last map, or on the only map of a single-map encoder
such as ``hrnetv2``). Output resolution: the last encoder map's.

In training the fusion convolution's pooled-branch half runs at the branches' own sizes
(:func:`~mit_semseg.models.decoders.factored.fused_conv3x3`, ``factored_training``), and its
conv5 half and the deep-supervision head's 3x3 convolution in Winograd form where that is
faster (:mod:`mit_semseg.nn.winograd`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn as nn

from ..layers import AdaptiveAvgPool2d, NormLayer, conv_norm, init_weights, upsample
from ..registry import DECODERS
from .base import SegmentationDecoder
from .factored import FactoredPPMDecoder, factored_now, fused_conv3x3

__all__ = ["PPM", "PPM_CHANNELS"]

PPM_CHANNELS = 512  # width of every pooling branch and of the fused map (fixed in the original)


class PPM(SegmentationDecoder):
    """The original's ``PPM`` / ``PPMDeepsup``.

    Args:
        num_class, in_channels, fc_dim: see :class:`SegmentationDecoder`.
        pool_scales: output sizes of the pyramid pooling branches.
        deep_sup: add the auxiliary head.
        norm_layer: normalisation layer constructor.
        factored_training: in training (and whenever autograd records), convolve the pooled
            branches at their own sizes instead of upsampling them first, and run the wide
            3x3 convolutions in Winograd form on CPU in float32: the same function of the
            same weights up to float rounding, for about a fifth fewer FLOPs per ResNet-50
            training step. An attribute, which may be switched at any time; ``False`` is the
            original's arithmetic.
    """

    output_index = -1

    def __init__(self, num_class: int = 150, in_channels: Sequence[int] | None = None, *,
                 fc_dim: int | None = None, pool_scales: Sequence[int] = (1, 2, 3, 6),
                 deep_sup: bool = False, norm_layer: NormLayer = nn.BatchNorm2d,
                 factored_training: bool = True) -> None:
        super().__init__(num_class, in_channels, fc_dim, deep_sup)
        self.factored_training = bool(factored_training)
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
        pooled = [branch(conv5) for branch in self.ppm]  # (B, 512, s, s) each
        if factored_now(self):
            return self.conv_last[1:](fused_conv3x3(self.conv_last[0], conv5, pooled))
        size = conv5.shape[2:]
        pyramid = [conv5] + [upsample(p, size) for p in pooled]
        return self.conv_last(torch.cat(pyramid, 1))

    def factored_inference_form(self) -> FactoredPPMDecoder:
        """This decoder's inference form (sharing its layers), for
        :func:`~mit_semseg.models.decoders.factored.factor_decoders`."""
        return FactoredPPMDecoder(self)


DECODERS.register("ppm", partial(PPM, deep_sup=False))
DECODERS.register("ppm_deepsup", partial(PPM, deep_sup=True))
