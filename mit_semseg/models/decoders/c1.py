"""C1 decoder: one 3x3 conv-norm-ReLU and a 1x1 classifier on the last encoder map.

Registered as ``c1`` and ``c1_deepsup`` (adds ``cbr_deepsup`` + ``conv_last_deepsup`` on the
second-to-last map, or on the only map of a single-map encoder such as ``hrnetv2``).
Output stride = the encoder's last stride.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn as nn

from ..registry import DECODERS
from .base import SegmentationDecoder
from .blocks import NormLayer, conv3x3_bn_relu, init_decoder_weights, resolve_in_channels

__all__ = ["C1"]


class C1(SegmentationDecoder):
    """The original's ``C1`` / ``C1DeepSup``.

    Args:
        num_class: number of classes.
        fc_dim: width of the last encoder map (the original's ``fc_dim``); optional when
            ``in_channels`` is given.
        use_softmax: see :meth:`SegmentationDecoder.forward`.
        deep_sup: add the auxiliary head.
        in_channels: the encoder's ``out_channels`` (default ``[fc_dim // 2, fc_dim]``).
        norm_layer: normalisation layer constructor.
    """

    def __init__(self, num_class: int = 150, fc_dim: int | None = 2048,
                 use_softmax: bool = False, *, deep_sup: bool = False,
                 in_channels: Sequence[int] | None = None,
                 norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        widths = resolve_in_channels(fc_dim, in_channels, lambda c: [c // 2, c])
        super().__init__(num_class, widths, use_softmax, deep_sup)
        top = widths[-1]
        self.cbr = conv3x3_bn_relu(top, top // 4, 1, norm_layer)
        self.conv_last = nn.Conv2d(top // 4, num_class, 1)
        if deep_sup:
            self._build_deep_sup_head(top // 4, norm_layer, dropout=None)
        init_decoder_weights(self)
        self._finish_init()

    def logits(self, conv_out: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.conv_last(self.cbr(self._check_map(conv_out, -1)))


DECODERS.register("c1", partial(C1, deep_sup=False))
DECODERS.register("c1_deepsup", partial(C1, deep_sup=True))
