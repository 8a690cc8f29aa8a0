"""C1 decoder: one 3x3 conv-norm-ReLU and a 1x1 classifier on the last encoder map.

Registered as ``c1`` and ``c1_deepsup`` (adds ``cbr_deepsup`` + ``conv_last_deepsup`` on the
second-to-last map, or on the only map of a single-map encoder such as ``hrnetv2``).
Output resolution: the last encoder map's.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn as nn

from ..layers import NormLayer, conv_norm, init_weights
from ..registry import DECODERS
from .base import SegmentationDecoder

__all__ = ["C1"]


class C1(SegmentationDecoder):
    """The original's ``C1`` / ``C1DeepSup``.

    Args:
        num_class, in_channels, fc_dim: see :class:`SegmentationDecoder`.
        deep_sup: add the auxiliary head.
        norm_layer: normalisation layer constructor.
    """

    output_index = -1

    def __init__(self, num_class: int = 150, in_channels: Sequence[int] | None = None, *,
                 fc_dim: int | None = None, deep_sup: bool = False,
                 norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__(num_class, in_channels, fc_dim, deep_sup)
        top = self.in_channels[-1]
        self.cbr = conv_norm(top, top // 4, 3, norm_layer=norm_layer)
        self.conv_last = nn.Conv2d(top // 4, num_class, 1)
        if deep_sup:
            self._build_deep_sup_head(top // 4, norm_layer, dropout=None)
        init_weights(self, fan="in", norm_bias=1e-4)

    def forward(self, conv_out: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.conv_last(self.cbr(self._check_map(conv_out, -1)))


DECODERS.register("c1", partial(C1, deep_sup=False))
DECODERS.register("c1_deepsup", partial(C1, deep_sup=True))
