"""Encoder + decoder + loss, with the original ``SegmentationModule`` call contract."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mit_semseg.nn.deterministic import NLLLoss

from .decoders.blocks import upsample

__all__ = ["SegmentationModule", "pixel_accuracy"]


def pixel_accuracy(pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Share of labelled pixels (``label >= 0``) whose argmax class is right (0-dim tensor).

    Args:
        pred: class scores (B, C, h, w) (logits or log-probabilities).
        label: (B, h, w) int64, negative = ignored.
    """
    predicted = pred.argmax(dim=1)
    valid = label >= 0
    correct = (valid & (predicted == label)).sum()
    return correct.float() / (valid.sum().float() + 1e-10)


class SegmentationModule(nn.Module):
    """Segmentation network as the original's scripts use it.

    Args:
        net_enc: encoder; called as ``net_enc(x, return_feature_maps=True)`` -> list of maps.
        net_dec: decoder with ``logits(maps)`` (and ``aux_logits(maps)`` for deep supervision).
        crit: loss on log-probabilities; default ``NLLLoss(ignore_index=-1)`` (``nn.NLLLoss``
            with a deterministic form on CUDA, see :mod:`mit_semseg.nn.deterministic`).
        deep_sup_scale: weight of the auxiliary loss, or ``None`` for no auxiliary loss.
    """

    def __init__(self, net_enc: nn.Module, net_dec: nn.Module, crit: nn.Module | None = None,
                 deep_sup_scale: float | None = None) -> None:
        super().__init__()
        if deep_sup_scale is not None and not getattr(net_dec, "deep_sup", False):
            raise ValueError(
                f"deep_sup_scale={deep_sup_scale} needs a deep-supervision decoder "
                f"(e.g. 'ppm_deepsup'); {type(net_dec).__name__} has no auxiliary head"
            )
        self.encoder = net_enc
        self.decoder = net_dec
        self.crit = crit if crit is not None else NLLLoss(ignore_index=-1)
        self.deep_sup_scale = deep_sup_scale

    @staticmethod
    def pixel_acc(pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """See :func:`pixel_accuracy` (kept under the original's method name)."""
        return pixel_accuracy(pred, label)

    def compute_loss(self, images: torch.Tensor,
                     labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and pixel accuracy for a batch.

        Args:
            images: (B, 3, H, W) normalised images.
            labels: (B, h, w) int64 at the decoder's output resolution, -1 = ignore.

        Returns:
            ``(loss, acc)``, both 0-dim; the auxiliary loss (upsampled to the main map's size)
            is added with weight ``deep_sup_scale``.
        """
        maps = self.encoder(images, return_feature_maps=True)
        logits = self.decoder.logits(maps)  # (B, C, h, w)
        if logits.shape[-2:] != labels.shape[-2:]:
            raise ValueError(
                f"labels are {tuple(labels.shape[-2:])} but the decoder predicts "
                f"{tuple(logits.shape[-2:])} for images {tuple(images.shape[-2:])}; set "
                "DATASET.segm_downsampling_rate to the model's output stride"
            )
        log_probs = F.log_softmax(logits, dim=1)
        loss = self.crit(log_probs, labels)
        if self.deep_sup_scale is not None:
            aux = self.decoder.aux_logits(maps)
            if aux.shape[-2:] != logits.shape[-2:]:
                aux = upsample(aux, logits.shape[-2:])
            loss = loss + self.crit(F.log_softmax(aux, dim=1), labels) * self.deep_sup_scale
        return loss, pixel_accuracy(log_probs, labels)

    def predict(self, images: torch.Tensor, seg_size: Sequence[int]) -> torch.Tensor:
        """Class probabilities (B, num_class, *seg_size): logits upsampled, then softmax."""
        maps = self.encoder(images, return_feature_maps=True)
        return self.decoder.predict(maps, seg_size)

    def forward(self, feed_dict: Mapping[str, Any] | Sequence[Mapping[str, Any]], *,
                segSize: Sequence[int] | None = None):  # noqa: N803
        """The original's contract.

        Args:
            feed_dict: ``{'img_data': (B,3,H,W), 'seg_label': (B,h,w)}`` (``seg_label`` only
                without ``segSize``); a one-element list of such dicts is accepted too.
            segSize: ``None`` -> :meth:`compute_loss`, ``(H, W)`` -> :meth:`predict`.
        """
        if isinstance(feed_dict, Sequence) and not isinstance(feed_dict, (str, bytes)):
            if len(feed_dict) != 1:
                raise ValueError(
                    f"got a list of {len(feed_dict)} batches; wrap the module in "
                    "UserScatteredDataParallel to spread them over devices"
                )
            feed_dict = feed_dict[0]
        if segSize is None:
            return self.compute_loss(feed_dict["img_data"], feed_dict["seg_label"])
        return self.predict(feed_dict["img_data"], segSize)
