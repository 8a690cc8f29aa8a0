"""``ModelBuilder``: the original ``mit_semseg`` 1.0.0's model-building interface.

Kept for code written against the original (``from mit_semseg.models import ModelBuilder``);
new code calls :func:`mit_semseg.models.build_segmentation_model` or the encoder/decoder
builders it stands in front of.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

from .builder import build_decoder, build_encoder, check_fc_dim
from .layers import NormLayer, init_weights

__all__ = ["ModelBuilder"]


class ModelBuilder:
    """The original's builder interface, over :mod:`mit_semseg.models.builder`.

    Differences from the original: an empty ``weights`` means random initialisation unless
    ``pretrained=True`` (the original downloaded ImageNet weights then), weights load strictly,
    and ``use_softmax`` changes nothing, since :class:`~mit_semseg.models.SegmentationModule`
    decides (log-probabilities for the loss in training, probabilities at ``segSize`` in
    inference); a decoder called directly returns logits.
    """

    @staticmethod
    def weights_init(m: nn.Module) -> None:
        """The original's decoder initialisation, applied to ``m`` and its submodules."""
        init_weights(m, fan="in", norm_bias=1e-4)

    @staticmethod
    def build_encoder(arch: str = "resnet50dilated", fc_dim: int = 512, weights: str = "", *,
                      pretrained: bool = False, norm_layer: NormLayer = nn.BatchNorm2d,
                      output_stride: int | None = None) -> nn.Module:
        """See :func:`~mit_semseg.models.build_encoder`; ``fc_dim`` is not used, as in the
        original (the decoder is where widths meet)."""
        return build_encoder(arch, weights=weights, pretrained=pretrained,
                             norm_layer=norm_layer, output_stride=output_stride)

    @staticmethod
    def build_decoder(arch: str = "ppm_deepsup", fc_dim: int | None = 512, num_class: int = 150,
                      weights: str = "", use_softmax: bool = False, *,
                      norm_layer: NormLayer = nn.BatchNorm2d,
                      in_channels: Sequence[int] | None = None) -> nn.Module:
        """See :func:`~mit_semseg.models.build_decoder`. Without ``in_channels`` the decoder
        has the original's layout for ``fc_dim``; with it, ``fc_dim`` must be its last width.
        ``use_softmax`` is accepted for the original's calls (see the class)."""
        if in_channels is None:
            return build_decoder(arch, num_class, fc_dim=fc_dim, weights=weights,
                                 norm_layer=norm_layer)
        check_fc_dim(fc_dim, in_channels, "in_channels")
        return build_decoder(arch, num_class, in_channels=in_channels, weights=weights,
                             norm_layer=norm_layer)
