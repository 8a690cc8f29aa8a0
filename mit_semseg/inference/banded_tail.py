"""The full-resolution tail of inference, a band of rows at a time.

A network predicts class scores at 1/4 or 1/8 of the image size; everything after that
(bilinear upsampling to the image size, softmax, averaging the scales, argmax) works on maps
of ``num_class x H x W`` floats: 150 MB per map for a 512x512 ADE20K image, several of them
alive at once when done whole. Here the scores are upsampled, normalised and added into the
result one band of rows at a time, so only the result itself is full size, and each band's
intermediate maps stay in the CPU cache.

* :func:`fast_logits` finds the feature-resolution scores of a module prepared for fast
  inference (:func:`mit_semseg.inference.fast_path.optimize_for_inference`, a compiled or
  onnxruntime segmenter). The plain module is left to its own full-size tail, whose operations
  are the original's and reproduce its scores bit for bit; the banded one differs by float rounding.
* :func:`add_probabilities` adds ``softmax(upsample(logits)) / terms`` into a score map.
* :func:`labels_from_logits` is the single-scale shortcut: argmax of the upsampled logits,
  no softmax (softmax keeps the order of the scores), no full-size float map at all.
* :class:`LogitsSegmenter` gives anything that computes logits (a compiled network, an
  onnxruntime session) the inference interface of the eager model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "BAND_BYTES",
    "LogitsSegmenter",
    "add_probabilities",
    "fast_logits",
    "labels_from_logits",
]

# bytes of one band of upsampled scores (the temporaries are a few times that)
BAND_BYTES = 4 << 20


def fast_logits(module: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``images -> (B, C, h, w)`` class scores of ``module`` when it takes the banded tail.

    That is a module marked ``fast_tail = True`` (set by
    :func:`mit_semseg.inference.fast_path.optimize_for_inference`, and by
    :class:`LogitsSegmenter`) with a ``logits(images)`` method; anything else gives ``None``.
    """
    own = getattr(module, "logits", None)
    return own if callable(own) and getattr(module, "fast_tail", False) else None


def _band_rows(num_class: int, width: int, batch: int) -> int:
    return max(1, BAND_BYTES // (4 * num_class * width * batch))


def _bands(logits: torch.Tensor, seg_size: Sequence[int]):
    """Yields ``(top, bottom, band)``: rows ``[top, bottom)`` of
    ``F.interpolate(logits, seg_size, mode="bilinear", align_corners=False)`` as float32.

    The vertical step interpolates between the two source rows of every output row with
    PyTorch's source-index rule (``(y + 0.5) * h / H - 0.5``, clamped at 0); the horizontal
    step is ``F.interpolate`` itself on the band (its row scale is 1, which copies rows).
    """
    logits = logits.float()
    batch, num_class, height, width = logits.shape
    out_height, out_width = int(seg_size[0]), int(seg_size[1])
    step = _band_rows(num_class, out_width, batch)
    for top in range(0, out_height, step):
        bottom = min(top + step, out_height)
        rows = torch.arange(top, bottom, device=logits.device, dtype=torch.float64)
        source = ((rows + 0.5) * (height / out_height) - 0.5).clamp(min=0)
        low = source.floor().long()
        high = (low + 1).clamp(max=height - 1)
        weight = (source - low).to(logits.dtype).view(1, 1, -1, 1)
        band = torch.lerp(logits[:, :, low], logits[:, :, high], weight)  # (B, C, n, w)
        yield top, bottom, F.interpolate(band, size=(bottom - top, out_width),
                                         mode="bilinear", align_corners=False)


def add_probabilities(out: torch.Tensor, logits: torch.Tensor, terms: int = 1,
                      overwrite: bool = False) -> torch.Tensor:
    """``out += softmax(upsample(logits)) / terms`` (``=`` with ``overwrite``), by bands.

    Args:
        out: ``(B, C, H, W)`` float32 score map, updated in place.
        logits: ``(B, C, h, w)`` class scores at any resolution and float dtype.
        terms: number of terms of the average this one belongs to (each is divided by it
            before it is added, as the original averages).
        overwrite: write instead of add (the first term: ``out`` may hold garbage).

    Returns:
        ``out``.
    """
    for top, bottom, band in _bands(logits, out.shape[-2:]):
        probs = F.softmax(band, dim=1)
        if terms != 1:
            probs = probs.div_(terms)
        if overwrite:
            out[:, :, top:bottom] = probs
        else:
            out[:, :, top:bottom].add_(probs)
    return out


def labels_from_logits(logits: torch.Tensor, seg_size: Sequence[int],
                       confidence: torch.Tensor | None = None) -> torch.Tensor:
    """``argmax`` over classes of the logits upsampled to ``seg_size``: ``(B, H, W)`` int64.

    Equal to the argmax of the probabilities (softmax is increasing), without computing
    them or holding any full-size float map.

    Args:
        logits: ``(B, C, h, w)`` class scores.
        seg_size: ``(H, W)``.
        confidence: optional ``(B, H, W)`` float32 map, filled with each pixel's probability
            of its label (the softmax of the upsampled scores, a band at a time); the labels
            are the same with or without it.
    """
    labels = torch.empty((logits.shape[0], int(seg_size[0]), int(seg_size[1])),
                         dtype=torch.long, device=logits.device)
    for top, bottom, band in _bands(logits, seg_size):
        best = band.argmax(dim=1)  # (B, n, W)
        labels[:, top:bottom] = best
        if confidence is not None:
            confidence[:, top:bottom] = F.softmax(band, dim=1).gather(1, best.unsqueeze(1))[:, 0]
    return labels


class LogitsSegmenter:
    """The eager model's inference interface around a function ``images -> logits``.

    ``segmenter({'img_data': images}, segSize=(H, W))`` and ``segmenter.predict(images,
    (H, W))`` give ``(B, C, H, W)`` probabilities like a
    :class:`~mit_semseg.models.SegmentationModule`; ``segmenter.logits(images)`` gives the
    feature-resolution scores, which :func:`mit_semseg.inference.predict.predict_probs` prefers.

    Args:
        logits: ``images (B, 3, H, W) -> (B, C, h, w)`` class scores.
    """

    fast_tail = True  # inference only: the banded tail (see fast_logits)

    def __init__(self, logits: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self._logits = logits

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores ``(B, C, h, w)`` at the decoder's resolution."""
        return self._logits(images)

    def predict(self, images: torch.Tensor, seg_size: Sequence[int]) -> torch.Tensor:
        """Probabilities ``(B, C, H, W)`` at ``seg_size``."""
        logits = self.logits(images)
        out = torch.empty((logits.shape[0], logits.shape[1], int(seg_size[0]),
                           int(seg_size[1])), device=logits.device)
        return add_probabilities(out, logits, overwrite=True)

    def __call__(self, feed_dict: Any, *, segSize: Sequence[int]) -> torch.Tensor:  # noqa: N803
        return self.predict(feed_dict["img_data"], segSize)

    def eval(self) -> LogitsSegmenter:
        """No-op (inference only), so code that calls ``module.eval()`` works unchanged."""
        return self
