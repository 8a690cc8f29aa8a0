"""Whole-image prediction shared by ``eval.py``, ``eval_multipro.py``, ``test.py`` and the app.

An image comes as a list of normalised tensors, one per test scale. :func:`predict_probs`
averages the class probabilities over the scales (as the original ``eval.py`` does), optionally
over horizontal flips, and optionally tiles large inputs with overlapping windows so that memory
stays bounded; :func:`predict_labels` gives the class of each pixel, and
:func:`predict_labels_and_confidence` the same classes with the probability of each. How to
predict travels as one :class:`PredictOptions`.

Each call takes one of two paths:

* a module prepared for fast inference (``fast_tail``, see
  :func:`mit_semseg.inference.banded_tail.fast_logits`) whose inputs all fit in the window:
  the network computes class scores at its own resolution, and the full-size tail (upsampling,
  softmax, averaging) runs by bands of rows (:mod:`mit_semseg.inference.banded_tail`);
* otherwise the module's own inference forward, ``module({'img_data': x}, segSize=(H, W))``
  giving ``(1, C, H, W)`` probabilities, whole or by windows: for the plain module these are
  the original's operations, which reproduce its scores bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
import torch.nn.functional as F

from mit_semseg.inference.banded_tail import add_probabilities, fast_logits, labels_from_logits
from mit_semseg.nn.precision import AMP_DTYPES, autocast

__all__ = [
    "PredictOptions",
    "Window",
    "predict_labels",
    "predict_labels_and_confidence",
    "predict_probs",
    "sliding_window_starts",
    "window_from",
]

# ``size`` alone (stride = 2/3 of it) or ``(size, stride)``, in pixels of the scaled input
Window = Union[int, tuple[int, int]]


@dataclass(frozen=True)
class PredictOptions:
    """How every image of a run is predicted.

    Attributes:
        flip: also run the horizontally flipped inputs and average the flipped-back outputs
            (``VAL.flip``).
        window: tile inputs larger than the window with overlapping crops (``size`` or
            ``(size, stride)`` in pixels of the scaled input, ``TEST.window_size``); ``None`` =
            whole images.
        amp: ``""`` (fp32), ``"bf16"`` or ``"fp16"`` (CUDA only): run the forward passes under
            :func:`torch.autocast`; the scores are still summed in fp32. Faster on hardware
            with bf16 units, but the numbers change slightly (``VAL.amp`` / ``TEST.amp``).

    Raises:
        ValueError: a window stride larger than its size (pixels would go unseen), a
            non-positive window, an unknown ``amp``.
    """

    flip: bool = False
    window: Window | None = None
    amp: str = ""

    def __post_init__(self) -> None:
        if self.amp not in AMP_DTYPES:  # fp16 on a CPU is refused where it runs
            raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)}, got {self.amp!r}")
        if self.window is not None:
            size, stride = self.window_size_stride()
            if size <= 0 or stride <= 0:
                raise ValueError(f"window size and stride must be positive, got {size}, {stride}")
            if stride > size:
                raise ValueError(f"window stride {stride} > size {size} would leave pixels unseen")

    def window_size_stride(self) -> tuple[int, int]:
        """``(size, stride)`` of the window (stride 2/3 of the size when not given)."""
        if isinstance(self.window, int):
            return self.window, max(self.window * 2 // 3, 1)
        size, stride = self.window
        return int(size), int(stride)

    def tiles(self, image: torch.Tensor) -> bool:
        """``image`` (``(1, 3, h, w)``) is larger than the window, so it is cut into tiles."""
        return self.window is not None and max(image.shape[2:]) > self.window_size_stride()[0]


def window_from(size: int, stride: int = 0) -> Window | None:
    """The window of the ``TEST.window_size`` / ``TEST.window_stride`` convention: ``None``
    (whole images) when ``size <= 0``, else ``(size, stride)``, a stride of 0 meaning two
    thirds of the size."""
    if size <= 0:
        return None
    return size, stride or size * 2 // 3


def sliding_window_starts(length: int, size: int, stride: int) -> list[int]:
    """Start offsets of windows of ``size`` covering ``[0, length)``; the last one is flush right.

    Args:
        length: extent to cover.
        size: window extent (a single window when ``length <= size``).
        stride: step between consecutive windows.
    """
    if size <= 0 or stride <= 0:
        raise ValueError(f"window size and stride must be positive, got {size}, {stride}")
    if length <= size:
        return [0]
    steps = math.ceil((length - size) / stride)
    return [min(i * stride, length - size) for i in range(steps + 1)]


def _forward_windows(module: Any, img: torch.Tensor, seg_size: tuple[int, int],
                     size: int, stride: int) -> torch.Tensor:
    """Probabilities at ``seg_size`` from overlapping crops of ``img``, averaged on overlaps."""
    _, _, height, width = img.shape
    total: torch.Tensor | None = None
    count = torch.zeros((1, 1, height, width), device=img.device)
    for top in sliding_window_starts(height, size, stride):
        for left in sliding_window_starts(width, size, stride):
            crop = img[:, :, top : top + size, left : left + size]
            crop_h, crop_w = crop.shape[2:]
            probs = module({"img_data": crop}, segSize=(crop_h, crop_w))  # (1, C, ch, cw)
            if total is None:
                total = torch.zeros(
                    (1, probs.shape[1], height, width), dtype=probs.dtype, device=img.device
                )
            total[:, :, top : top + crop_h, left : left + crop_w] += probs
            count[:, :, top : top + crop_h, left : left + crop_w] += 1
    assert total is not None  # at least one window always exists
    probs = total / count
    if (height, width) != tuple(seg_size):
        probs = F.interpolate(probs, size=seg_size, mode="bilinear", align_corners=False)
    return probs


def _passes(img_list: Sequence[torch.Tensor], device: torch.device, flip: bool
            ) -> Iterator[tuple[torch.Tensor, bool]]:
    """``(input on device, flipped)`` for every forward pass of an image."""
    for img in img_list:
        img = img.to(device, non_blocking=True)
        yield img, False
        if flip:
            yield img.flip(-1), True


def _banded_scores(logits_of: Callable[[torch.Tensor], torch.Tensor],
                   img_list: Sequence[torch.Tensor], seg_size: tuple[int, int],
                   device: torch.device, flip: bool) -> torch.Tensor:
    """The mean probabilities from feature-resolution scores, built by bands of rows."""
    passes = len(img_list) * (2 if flip else 1)
    scores: torch.Tensor | None = None
    for x, flipped in _passes(img_list, device, flip):
        logits = logits_of(x)
        if flipped:  # bilinear resizing commutes with the mirror image
            logits = logits.flip(-1)
        first = scores is None
        if first:
            scores = torch.empty((logits.shape[0], logits.shape[1], *seg_size),
                                 device=logits.device)
        add_probabilities(scores, logits, passes, overwrite=first)
    assert scores is not None
    return scores


def _module_scores(module: Any, img_list: Sequence[torch.Tensor], seg_size: tuple[int, int],
                   device: torch.device, options: PredictOptions) -> torch.Tensor:
    """The mean probabilities from the module's own full-size forward (whole or tiled)."""
    passes = len(img_list) * (2 if options.flip else 1)
    scores: torch.Tensor | None = None
    for x, flipped in _passes(img_list, device, options.flip):
        if options.tiles(x):
            probs = _forward_windows(module, x, seg_size, *options.window_size_stride())
        else:
            probs = module({"img_data": x}, segSize=seg_size)
        if flipped:
            probs = probs.flip(-1)
        # each term divided by the number of passes, then added, as the original does (a
        # multiply-add with 1/passes rounds differently in ~1/4 of the values), so that the
        # scores are bit-identical to its; in place, because these full-resolution maps are
        # the largest tensors of the pass (``probs`` is a fresh tensor: fp32 ``.float()``
        # returns it, others a copy)
        term = probs.float().div_(passes)
        scores = term if scores is None else scores.add_(term)
    assert scores is not None
    return scores


def predict_probs(module: Any, img_list: Sequence[torch.Tensor], seg_size: Sequence[int],
                  device: torch.device, options: PredictOptions = PredictOptions()
                  ) -> torch.Tensor:
    """Class probabilities at ``seg_size`` averaged over scales (and flips).

    Args:
        module: an inference module in eval mode, already on ``device``: a
            :class:`~mit_semseg.models.SegmentationModule`, one prepared for fast inference,
            or a :class:`~mit_semseg.inference.banded_tail.LogitsSegmenter`.
        img_list: one normalised ``(1, 3, h, w)`` tensor per test scale.
        seg_size: ``(H, W)`` output size, normally the original image size.
        device: where to run.
        options: flips, windows and precision.

    Returns:
        ``(C, H, W)`` float tensor on ``device``: the mean of all the probability maps.
    """
    if len(img_list) == 0:
        raise ValueError("img_list is empty: need at least one scale")
    seg_size = (int(seg_size[0]), int(seg_size[1]))
    logits_of = fast_logits(module)
    with torch.inference_mode(), autocast(device, options.amp):
        if logits_of is not None and not any(options.tiles(img) for img in img_list):
            scores = _banded_scores(logits_of, img_list, seg_size, device, options.flip)
        else:
            scores = _module_scores(module, img_list, seg_size, device, options)
    return scores[0]


def _shortcut_logits(module: Any, img_list: Sequence[torch.Tensor], options: PredictOptions
                     ) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The module's feature-resolution scores when the labels may come from their argmax: one
    scale, no flip, no tiling, a module prepared for fast inference; else None."""
    single = len(img_list) == 1 and not options.flip and not options.tiles(img_list[0])
    return fast_logits(module) if single else None


def predict_labels(module: Any, img_list: Sequence[torch.Tensor], seg_size: Sequence[int],
                   device: torch.device, options: PredictOptions = PredictOptions()
                   ) -> torch.Tensor:
    """Class index per pixel ``(H, W)`` of an image given at one or more scales.

    One scale, no flip and no tiling, on a module prepared for fast inference: the argmax of
    the upsampled logits (:func:`~mit_semseg.inference.banded_tail.labels_from_logits`), no
    softmax and no full-size float map. Otherwise the argmax of :func:`predict_probs` (same
    arguments), since averaging over scales needs the probabilities.
    """
    return _labels(module, img_list, seg_size, device, options, None)


def predict_labels_and_confidence(module: Any, img_list: Sequence[torch.Tensor],
                                  seg_size: Sequence[int], device: torch.device,
                                  options: PredictOptions = PredictOptions()
                                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`predict_labels`' labels, and how sure the model is of each.

    The labels are those :func:`predict_labels` gives for the same arguments (the same path,
    the same operations); the confidence is each pixel's probability of its label, from the
    same forward passes: on the single-scale shortcut the softmax of the upsampled logits, by
    bands, otherwise :func:`predict_probs`' mean probability.

    Returns:
        ``(labels, confidence)``: ``(H, W)`` int64 and ``(H, W)`` float32 in ``[0, 1]``, on
        ``device``.
    """
    size = (int(seg_size[0]), int(seg_size[1]))
    confidence = torch.empty((1, *size), device=device)
    labels = _labels(module, img_list, size, device, options, confidence)
    return labels, confidence[0]


def _labels(module: Any, img_list: Sequence[torch.Tensor], seg_size: Sequence[int],
            device: torch.device, options: PredictOptions, confidence: torch.Tensor | None
            ) -> torch.Tensor:
    """The labels of :func:`predict_labels`; fills ``confidence`` (``(1, H, W)``) if given."""
    logits_of = _shortcut_logits(module, img_list, options)
    if logits_of is None:
        probs = predict_probs(module, img_list, seg_size, device, options)
        labels = probs.argmax(0)
        if confidence is not None:
            confidence[0] = probs.gather(0, labels.unsqueeze(0))[0]
        return labels
    with torch.inference_mode(), autocast(device, options.amp):
        logits = logits_of(img_list[0].to(device, non_blocking=True))
    return labels_from_logits(logits, seg_size, confidence)[0]
