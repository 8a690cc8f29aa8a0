"""Encoder + decoder + loss: the one place that decides between training and inference.

In training (no ``segSize``) it returns the loss and pixel accuracy, adding the decoder's
auxiliary loss when the decoder has deep supervision; in inference it returns class
probabilities at the requested size. Decoders only compute class scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mit_semseg.nn.deterministic_ops import NLLLoss

from .layers import upsample

__all__ = ["SegmentationModule", "pixel_accuracy", "softmax_over_classes"]


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


def softmax_over_classes(x: torch.Tensor) -> torch.Tensor:
    """``F.softmax(x, dim=1)`` that keeps a channels-last ``x`` channels-last.

    On CPU, softmax over dim 1 of a channels-last tensor first copies it to the default
    layout; seen as NHWC, the class axis is the contiguous last one and needs no copy.
    Half-precision logits (autocast) give float32 probabilities, so that they sum to 1.
    """
    dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else None
    if (x.dim() == 4 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)):
        return F.softmax(x.permute(0, 2, 3, 1), dim=-1, dtype=dtype).permute(0, 3, 1, 2)
    return F.softmax(x, dim=1, dtype=dtype)


class SegmentationModule(nn.Module):
    """Segmentation network with the original's call contract.

    Args:
        net_enc: encoder: ``net_enc(x)`` -> list of maps, with declared ``strides``.
        net_dec: decoder: ``net_dec(maps)`` -> logits, with ``deep_sup`` and ``aux_logits``.
        crit: loss on log-probabilities; default ``nn.NLLLoss(ignore_index=-1)``.
        deep_sup_scale: weight of the auxiliary loss, added whenever ``net_dec`` has deep
            supervision (``net_dec.deep_sup``) and ignored otherwise. The original's scripts
            pass it only for ``*_deepsup`` decoders and leave the default ``None`` otherwise,
            which works the same here; training a deep-supervision decoder with ``None`` is
            refused with an error, as it failed in the original.
    """

    def __init__(self, net_enc: nn.Module, net_dec: nn.Module, crit: nn.Module | None = None,
                 deep_sup_scale: float | None = None) -> None:
        super().__init__()
        if deep_sup_scale is not None and not deep_sup_scale >= 0:
            raise ValueError(f"deep_sup_scale must be >= 0 (TRAIN.deep_sup_scale), "
                             f"got {deep_sup_scale}")
        self.encoder = net_enc
        self.decoder = net_dec
        self.crit = crit if crit is not None else NLLLoss(ignore_index=-1)
        self.deep_sup_scale = deep_sup_scale

    @property
    def output_stride(self) -> int:
        """Input-to-logits downsampling factor: the labels of :meth:`compute_loss` must be
        this many times smaller than the images (``DATASET.segm_downsampling_rate``)."""
        return self.encoder.strides[self.decoder.output_index]

    def compute_loss(self, images: torch.Tensor,
                     labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and pixel accuracy for a batch.

        Args:
            images: (B, 3, H, W) normalised images.
            labels: (B, h, w) int64 at the decoder's output resolution, -1 = ignore.

        Returns:
            ``(loss, acc)``, both 0-dim; with deep supervision, the auxiliary loss (its map
            upsampled to the main map's size) is added with weight ``deep_sup_scale``.
        """
        maps = self.encoder(images)
        logits = self.decoder(maps)  # (B, C, h, w)
        if logits.shape[-2:] != labels.shape[-2:]:
            raise ValueError(
                f"labels are {tuple(labels.shape[-2:])} but the decoder predicts "
                f"{tuple(logits.shape[-2:])} for images {tuple(images.shape[-2:])}; set "
                f"DATASET.segm_downsampling_rate to the model's output stride "
                f"{self.output_stride}"
            )
        log_probs = F.log_softmax(logits, dim=1)
        loss = self.crit(log_probs, labels)
        if self.decoder.deep_sup:
            if self.deep_sup_scale is None:
                raise ValueError(
                    f"{type(self.decoder).__name__} has deep supervision but deep_sup_scale "
                    "is None; pass the auxiliary loss weight (TRAIN.deep_sup_scale, e.g. 0.4)"
                )
            aux = upsample(self.decoder.aux_logits(maps), logits.shape[-2:])
            loss = loss + self.crit(F.log_softmax(aux, dim=1), labels) * self.deep_sup_scale
        return loss, pixel_accuracy(log_probs, labels)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores (B, num_class, h, w) at the decoder's resolution (1/output_stride)."""
        return self.decoder(self.encoder(images))

    def predict(self, images: torch.Tensor, seg_size: Sequence[int]) -> torch.Tensor:
        """Class probabilities (B, num_class, *seg_size): logits upsampled, then softmax."""
        return softmax_over_classes(upsample(self.logits(images), seg_size))

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
