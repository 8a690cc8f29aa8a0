"""Common base of the decoders: declared widths and output resolution, the deep-supervision
head, and a clear error when the encoder maps do not fit."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..layers import NormLayer, conv_norm, conv_norm_forward
from .factored import factored_now

__all__ = ["SegmentationDecoder"]


class SegmentationDecoder(nn.Module):
    """Base class: ``forward(conv_out)`` returns class scores (logits) at feature resolution.

    :class:`~mit_semseg.models.SegmentationModule` turns them into a loss (training) or into
    probabilities at the image size (inference), and adds :meth:`aux_logits` to the loss when
    the decoder has deep supervision.

    Args:
        num_class: number of output classes.
        in_channels: widths of the encoder maps (the encoder's ``out_channels``), or ``None``
            with ``fc_dim``.
        fc_dim: instead of ``in_channels``, only the last width: the decoder then assumes the
            other widths the way the original's class did (:meth:`original_in_channels`),
            which is the layout the original's checkpoints have.
        deep_sup: build the auxiliary head on the second-to-last encoder map (on the only map
            for a single-map encoder such as HRNetV2, see :attr:`aux_index`).

    Attributes:
        output_index: the encoder map whose resolution the logits have; every subclass sets
            it (the registry refuses a decoder without it).
    """

    output_index: int

    def __init__(self, num_class: int, in_channels: Sequence[int] | None, fc_dim: int | None,
                 deep_sup: bool) -> None:
        super().__init__()
        if (in_channels is None) == (fc_dim is None):
            raise TypeError(
                f"{type(self).__name__} needs in_channels (the encoder's out_channels) or, for "
                f"the original's layout, fc_dim; got in_channels={in_channels}, fc_dim={fc_dim}"
            )
        widths = self.original_in_channels(int(fc_dim)) if in_channels is None else in_channels
        self.in_channels = [int(c) for c in widths]
        if not self.in_channels:
            raise ValueError("in_channels must list at least one encoder map width")
        self.num_class = int(num_class)
        self.deep_sup = bool(deep_sup)

    @staticmethod
    def original_in_channels(fc_dim: int) -> list[int]:
        """The encoder widths the original's class assumed from ``fc_dim`` alone: its auxiliary
        head read ``fc_dim // 2`` channels."""
        return [fc_dim // 2, fc_dim]

    @property
    def aux_index(self) -> int:
        """Which encoder map the auxiliary head reads: the second-to-last one, or the only one.

        The original always read ``conv_out[-2]`` and so failed in training with HRNetV2 (one
        map). Supervising that single map through its own light head still gives the encoder
        a direct training signal that bypasses the main head (e.g. PPM), so deep supervision
        stays usable instead of being an error.
        """
        return -2 if len(self.in_channels) >= 2 else -1

    def class_score_layers(self) -> dict[str, nn.Conv2d]:
        """The 1x1 convolutions whose output channels are the classes, by state-dict prefix.

        Every decoder ends in ``conv_last`` (a key of the checkpoint format), a classifier
        or a block whose last layer is one; with deep supervision ``conv_last_deepsup`` is the
        second. Their rows (output channels) belong to the classes in label order, so a model
        fine-tuned to other classes re-maps them (:mod:`mit_semseg.models.init_from`).
        """
        heads = {"conv_last": self.conv_last}
        if self.deep_sup:
            heads["conv_last_deepsup"] = self.conv_last_deepsup
        layers = {}
        for name, head in heads.items():
            if isinstance(head, nn.Sequential):
                name, head = f"{name}.{len(head) - 1}", head[-1]
            if not (isinstance(head, nn.Conv2d) and head.out_channels == self.num_class
                    and head.kernel_size == (1, 1)):
                raise TypeError(f"{type(self).__name__}.{name} is not a 1x1 convolution to "
                                f"{self.num_class} classes")
            layers[name] = head
        return layers

    def _build_deep_sup_head(self, mid_planes: int, norm_layer: NormLayer,
                             dropout: float | None) -> None:
        in_planes = self.in_channels[self.aux_index]
        self.cbr_deepsup = conv_norm(in_planes, mid_planes, 3, norm_layer=norm_layer)
        if dropout is not None:
            self.dropout_deepsup = nn.Dropout2d(dropout)
        self.conv_last_deepsup = nn.Conv2d(mid_planes, self.num_class, 1)

    def _check_map(self, conv_out: Sequence[torch.Tensor], index: int) -> torch.Tensor:
        if not -len(conv_out) <= index < len(conv_out):
            raise ValueError(
                f"{type(self).__name__} needs encoder map {index}, but got {len(conv_out)} "
                f"map(s); it was built for in_channels {self.in_channels}, build it with "
                "in_channels=encoder.out_channels"
            )
        x = conv_out[index]
        expected = self.in_channels[index]
        if x.shape[1] != expected:
            raise ValueError(
                f"{type(self).__name__} was built for {expected} channels in encoder map "
                f"{index} but got {x.shape[1]}; build the decoder with "
                "in_channels=encoder.out_channels (and fc_dim = the last width)"
            )
        return x

    def forward(self, conv_out: Sequence[torch.Tensor]) -> torch.Tensor:
        """Class scores (B, num_class, h, w) at the resolution of ``conv_out[output_index]``."""
        raise NotImplementedError

    def aux_logits(self, conv_out: Sequence[torch.Tensor]) -> torch.Tensor:
        """Deep-supervision class scores from ``conv_out[aux_index]`` (at that map's
        resolution)."""
        if not self.deep_sup:
            raise RuntimeError(f"{type(self).__name__} was built without deep supervision")
        x = conv_norm_forward(self.cbr_deepsup, self._check_map(conv_out, self.aux_index),
                              fewer_flops=factored_now(self))
        if hasattr(self, "dropout_deepsup"):
            x = self.dropout_deepsup(x)
        return self.conv_last_deepsup(x)
