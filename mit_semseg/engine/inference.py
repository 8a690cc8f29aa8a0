"""Whole-image prediction shared by ``eval.py``, ``eval_multipro.py`` and ``test.py``.

:func:`predict_probs` averages class probabilities over the scales of a multi-scale input list
(as the original ``eval.py`` does), optionally over horizontal flips, and optionally tiles large
inputs with overlapping windows so that memory stays bounded. The module is expected to behave
like :class:`mit_semseg.models.SegmentationModule` in inference: ``module({'img_data': x},
segSize=(H, W))`` returns ``(B, num_class, H, W)`` probabilities.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

import torch
import torch.nn.functional as F
from torch import nn

from mit_semseg.engine.precision import autocast

if TYPE_CHECKING:
    from mit_semseg.engine.onnxruntime_backend import OnnxRuntimeSegmenter

__all__ = [
    "TrainedModel",
    "Window",
    "collect_images",
    "output_names",
    "load_segmentation_module",
    "predict_probs",
    "sliding_window_starts",
]

logger = logging.getLogger(__name__)

# ``size`` alone (stride = 2/3 of it) or ``(size, stride)``, in pixels of the scaled input
Window = Union[int, tuple[int, int]]


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


def _window_params(window: Window) -> tuple[int, int]:
    if isinstance(window, int):
        return window, max(window * 2 // 3, 1)
    size, stride = window
    if stride > size:
        raise ValueError(f"window stride {stride} > size {size} would leave pixels unseen")
    return int(size), int(stride)


def _forward_windows(
    module: nn.Module, img: torch.Tensor, seg_size: tuple[int, int], window: Window
) -> torch.Tensor:
    """Probabilities at ``seg_size`` from overlapping crops of ``img``, averaged on overlaps."""
    size, stride = _window_params(window)
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


def predict_probs(
    segmentation_module: nn.Module,
    img_list: Sequence[torch.Tensor],
    seg_size: tuple[int, int],
    device: torch.device,
    flip: bool = False,
    window: Window | None = None,
    amp: str = "",
) -> torch.Tensor:
    """Class probabilities at ``seg_size`` averaged over scales (and flips).

    Args:
        segmentation_module: module in eval mode answering ``module(feed, segSize=(H, W))``
            with a new ``(1, C, H, W)`` probability tensor (it is scaled in place); it must
            already be on ``device``.
        img_list: one normalised ``(1, 3, h, w)`` tensor per test scale.
        seg_size: ``(H, W)`` output size, normally the original image size.
        device: where to run.
        flip: also run on the horizontally flipped inputs and average the flipped-back outputs.
        window: tile inputs larger than the window with overlapping crops (``size`` or
            ``(size, stride)`` in pixels of the scaled input); ``None`` = whole image at once.
        amp: ``""`` (fp32, the default), ``"bf16"`` or ``"fp16"`` (CUDA only): run the
            forward passes under :func:`torch.autocast`; the scores are still summed in fp32.
            Faster on hardware with bf16 units, but the numbers change slightly.

    Returns:
        ``(C, H, W)`` float tensor on ``device``: the mean of all the probability maps.
    """
    from mit_semseg.engine.score_maps import add_probabilities, fast_logits

    if len(img_list) == 0:
        raise ValueError("img_list is empty: need at least one scale")
    seg_size = (int(seg_size[0]), int(seg_size[1]))
    passes = len(img_list) * (2 if flip else 1)
    # A module prepared for fast inference runs the full-size tail (upsampling, softmax,
    # averaging) by bands of rows, so that the result is the only full-size map; the plain
    # module keeps the original's full-size operations, which reproduce its scores bit for bit.
    logits_of = fast_logits(segmentation_module)
    scores: torch.Tensor | None = None
    with torch.inference_mode(), autocast(device, amp):
        for img in img_list:
            img = img.to(device, non_blocking=True)
            for flipped in (False, True) if flip else (False,):
                x = img.flip(-1) if flipped else img
                tiled = window is not None and max(x.shape[2:]) > _window_params(window)[0]
                if logits_of is not None and not tiled:
                    logits = logits_of(x)
                    if flipped:  # bilinear resizing commutes with the mirror image
                        logits = logits.flip(-1)
                    first = scores is None
                    if first:
                        scores = torch.empty((logits.shape[0], logits.shape[1], *seg_size),
                                             device=logits.device)
                    add_probabilities(scores, logits, passes, overwrite=first)
                    continue
                if tiled:
                    probs = _forward_windows(segmentation_module, x, seg_size, window)
                else:
                    probs = segmentation_module({"img_data": x}, segSize=seg_size)
                if flipped:
                    probs = probs.flip(-1)
                # each term divided by the number of passes, then added, as the original does
                # (a multiply-add with 1/passes rounds differently in ~1/4 of the values), so
                # that the scores are bit-identical to its; in place, because these
                # full-resolution maps are the largest tensors of the pass (``probs`` is a
                # fresh tensor: fp32 ``.float()`` returns it, others a copy)
                term = probs.float().div_(passes)
                scores = term if scores is None else scores.add_(term)
    assert scores is not None
    return scores[0]


@dataclass(frozen=True)
class TrainedModel:
    """A trained model on disk: its architecture and its two weight files.

    Attributes:
        arch_encoder: encoder name (``MODEL.arch_encoder``).
        arch_decoder: decoder name (``MODEL.arch_decoder``).
        num_class: number of classes (``DATASET.num_class``).
        weights_dir: folder of the checkpoint files (``DIR``).
        checkpoint: file suffix such as ``epoch_20.pth`` (``VAL.checkpoint`` /
            ``TEST.checkpoint``): the weights are ``weights_dir/{encoder,decoder}_<checkpoint>``.
        fc_dim: the encoder's last width as the config states it (``MODEL.fc_dim``), checked
            against the encoder; ``None`` skips the check.
        fast_inference: fold BatchNorm into the convolutions and use the channels-last layout
            (``MODEL.fast_inference``, :func:`mit_semseg.perf.optimize_for_inference`).
        onnx_file: an ONNX export of these weights (``MODEL.backend onnxruntime``, see
            :func:`mit_semseg.engine.onnxruntime_backend.cached_onnx_export`); when set,
            :func:`load_segmentation_module` runs it in onnxruntime instead of PyTorch.
    """

    arch_encoder: str
    arch_decoder: str
    num_class: int
    weights_dir: str | Path
    checkpoint: str
    fc_dim: int | None = None
    fast_inference: bool = True
    onnx_file: str | Path | None = None

    @property
    def backend(self) -> str:
        """What runs the network: ``"onnxruntime"`` with an ``onnx_file``, else ``"torch"``."""
        return "torch" if self.onnx_file is None else "onnxruntime"

    def weight_files(self) -> dict[str, Path]:
        """``{"encoder": path, "decoder": path}``."""
        return {part: Path(self.weights_dir) / f"{part}_{self.checkpoint}"
                for part in ("encoder", "decoder")}


def load_segmentation_module(model: TrainedModel, device: torch.device
                             ) -> nn.Module | OnnxRuntimeSegmenter:
    """Build ``model`` from its weight files, for inference on ``device``.

    Returns:
        a :class:`~mit_semseg.models.SegmentationModule` in eval mode on ``device``; with an
        ``onnx_file``, an :class:`~mit_semseg.engine.onnxruntime_backend.OnnxRuntimeSegmenter`
        of it, which answers the same calls.

    Raises:
        FileNotFoundError: naming each missing checkpoint (or ONNX) file.
        ValueError: ``model.fc_dim`` does not match the encoder.
    """
    if model.onnx_file is not None:
        from mit_semseg.engine.onnxruntime_backend import OnnxRuntimeSegmenter

        logger.info("running %s with onnxruntime", model.onnx_file)
        return OnnxRuntimeSegmenter(model.onnx_file)
    paths = model.weight_files()
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"checkpoint file(s) not found: {', '.join(missing)} (set DIR to the training "
            "output folder and VAL.checkpoint / TEST.checkpoint to e.g. epoch_20.pth)"
        )
    from mit_semseg.models import build_segmentation_model

    logger.info("loading %s and %s", paths["encoder"], paths["decoder"])
    module = build_segmentation_model(
        model.arch_encoder, model.arch_decoder, model.num_class, fc_dim=model.fc_dim,
        weights_encoder=str(paths["encoder"]), weights_decoder=str(paths["decoder"]),
    ).to(device).eval()
    if model.fast_inference:
        from mit_semseg.perf import optimize_for_inference

        optimize_for_inference(module, device)
    return module


def collect_images(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Expands ``--imgs`` arguments (files, folders, list files) into image paths.

    Each argument is expanded with :func:`mit_semseg.data.list_images`; an argument that
    cannot be used (missing path, empty folder, unknown file type) is reported instead of
    stopping the others.

    Returns:
        ``(images, problems)``: the images in order without duplicates, and one message per
        unusable argument.
    """
    from mit_semseg.data import list_images

    images: list[Path] = []
    problems: list[str] = []
    seen: set[Path] = set()
    for item in inputs:
        try:
            found = list_images(item)
        except (FileNotFoundError, ValueError) as exc:
            problems.append(str(exc))
            continue
        for path in map(Path, found):
            if path.resolve() not in seen:
                seen.add(path.resolve())
                images.append(path)
    return images, problems


def output_names(images: Sequence[Path]) -> list[str]:
    """Unique output stems for images, readable and stable.

    The stem is the path relative to the images' common folder with separators turned into
    ``__`` (``a/x.jpg`` and ``b/x.jpg`` give ``a__x`` and ``b__x``; a single folder gives plain
    file stems). Files differing only by extension keep it (``x_jpg``, ``x_png``).
    """
    if not images:
        return []
    resolved = [p.resolve() for p in images]
    base = Path(os.path.commonpath([p.parent for p in resolved]))
    rel = [p.relative_to(base) for p in resolved]
    stems = ["__".join(r.with_suffix("").parts) for r in rel]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    names = [
        f"{stem}_{r.suffix[1:]}" if counts[stem] > 1 else stem for r, stem in zip(rel, stems)
    ]
    # last resort for pathological names (e.g. "x_jpg.png" next to "x.jpg" and "x.png")
    taken: set[str] = set()
    for i, name in enumerate(names):
        candidate, n = name, 2
        while candidate in taken:
            candidate, n = f"{name}_{n}", n + 1
        taken.add(candidate)
        names[i] = candidate
    return names
