"""Common base of the decoders: logits methods plus the original's ``forward`` contract."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..compat import attach_upstream_bn_buffers
from .blocks import NormLayer, conv3x3_bn_relu, softmax_over_classes, upsample

__all__ = ["SegmentationDecoder"]


class SegmentationDecoder(nn.Module):
    """Base class: subclasses implement :meth:`logits` (and get :meth:`aux_logits` for free).

    :class:`~mit_semseg.models.SegmentationModule` calls :meth:`logits` / :meth:`aux_logits`
    and does the upsampling, softmax and loss itself. :meth:`forward` keeps the original's
    behaviour for code that calls a decoder directly.

    Args:
        num_class: number of output classes.
        in_channels: widths of the encoder maps.
        use_softmax: what :meth:`forward` returns (see there).
        deep_sup: build the auxiliary head on the second-to-last encoder map (on the only map
            for a single-map encoder such as HRNetV2, see :attr:`aux_index`).
    """

    def __init__(self, num_class: int, in_channels: Sequence[int], use_softmax: bool,
                 deep_sup: bool) -> None:
        super().__init__()
        self.num_class = int(num_class)
        self.in_channels = list(in_channels)
        self.use_softmax = bool(use_softmax)
        self.deep_sup = bool(deep_sup)

    @property
    def aux_index(self) -> int:
        """Which encoder map the auxiliary head reads: the second-to-last one, or the only one.

        The original always read ``conv_out[-2]`` and so failed in training with HRNetV2 (one
        map). Supervising that single map through its own light head still gives the encoder
        a direct training signal that bypasses the main head (e.g. PPM), so deep supervision
        stays usable instead of being an error.
        """
        return -2 if len(self.in_channels) >= 2 else -1

    def _build_deep_sup_head(self, mid_planes: int, norm_layer: NormLayer,
                             dropout: float | None) -> None:
        in_planes = self.in_channels[self.aux_index]
        self.cbr_deepsup = conv3x3_bn_relu(in_planes, mid_planes, 1, norm_layer)
        if dropout is not None:
            self.dropout_deepsup = nn.Dropout2d(dropout)
        self.conv_last_deepsup = nn.Conv2d(mid_planes, self.num_class, 1)

    def _finish_init(self) -> None:
        attach_upstream_bn_buffers(self)

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

    def logits(self, conv_out: Sequence[torch.Tensor]) -> torch.Tensor:
        """Class scores (B, num_class, h, w) at the decoder's feature resolution."""
        raise NotImplementedError

    def aux_logits(self, conv_out: Sequence[torch.Tensor]) -> torch.Tensor:
        """Deep-supervision class scores from ``conv_out[aux_index]`` (at that map's
        resolution)."""
        if not self.deep_sup:
            raise RuntimeError(f"{type(self).__name__} was built without deep supervision")
        x = self.cbr_deepsup(self._check_map(conv_out, self.aux_index))
        if hasattr(self, "dropout_deepsup"):
            x = self.dropout_deepsup(x)
        return self.conv_last_deepsup(x)

    def predict(self, conv_out: Sequence[torch.Tensor],
                seg_size: Sequence[int] | None = None) -> torch.Tensor:
        """Class probabilities, bilinearly upsampled to ``seg_size`` (B, num_class, H, W)."""
        x = self.logits(conv_out)
        if seg_size is not None:
            x = upsample(x, seg_size)
        return softmax_over_classes(x)

    def log_probs(self, conv_out: Sequence[torch.Tensor]):
        """Log-softmax at feature resolution; a ``(main, aux)`` pair for deep supervision."""
        main = F.log_softmax(self.logits(conv_out), dim=1)
        if not self.deep_sup:
            return main
        return main, F.log_softmax(self.aux_logits(conv_out), dim=1)

    def forward(self, conv_out: Sequence[torch.Tensor], segSize: Sequence[int] | None = None):  # noqa: N803
        """The original's contract: probabilities at ``segSize`` when built with
        ``use_softmax=True``, else :meth:`log_probs` (``segSize`` is then ignored)."""
        if self.use_softmax:
            return self.predict(conv_out, segSize)
        return self.log_probs(conv_out)
