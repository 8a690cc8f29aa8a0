"""Whole-image prediction shared by ``eval.py``, ``eval_multipro.py`` and ``test.py``.

:func:`predict_probs` averages class probabilities over the scales of a multi-scale input list
(as the original ``eval.py`` does), optionally over horizontal flips, and optionally tiles large
inputs with overlapping windows so that memory stays bounded. The module is expected to behave
like :class:`mit_semseg.models.SegmentationModule` in inference: ``module({'img_data': x},
segSize=(H, W))`` returns ``(B, num_class, H, W)`` probabilities.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "Window",
    "collect_images",
    "output_names",
    "read_image_rgb",
    "load_segmentation_module",
    "multi_scale_inputs",
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
) -> torch.Tensor:
    """Class probabilities at ``seg_size`` averaged over scales (and flips).

    Args:
        segmentation_module: module in eval mode answering ``module(feed, segSize=(H, W))``
            with ``(1, C, H, W)`` probabilities; it must already be on ``device``.
        img_list: one normalised ``(1, 3, h, w)`` tensor per test scale.
        seg_size: ``(H, W)`` output size, normally the original image size.
        device: where to run.
        flip: also run on the horizontally flipped inputs and average the flipped-back outputs.
        window: tile inputs larger than the window with overlapping crops (``size`` or
            ``(size, stride)`` in pixels of the scaled input); ``None`` = whole image at once.

    Returns:
        ``(C, H, W)`` float tensor on ``device``: the mean of all the probability maps.
    """
    if len(img_list) == 0:
        raise ValueError("img_list is empty: need at least one scale")
    seg_size = (int(seg_size[0]), int(seg_size[1]))
    passes = len(img_list) * (2 if flip else 1)
    scores: torch.Tensor | None = None
    with torch.inference_mode():
        for img in img_list:
            img = img.to(device, non_blocking=True)
            for flipped in (False, True) if flip else (False,):
                x = img.flip(-1) if flipped else img
                if window is not None and max(x.shape[2:]) > _window_params(window)[0]:
                    probs = _forward_windows(segmentation_module, x, seg_size, window)
                else:
                    probs = segmentation_module({"img_data": x}, segSize=seg_size)
                if flipped:
                    probs = probs.flip(-1)
                # divide each term (instead of the sum) like the original, so that a
                # single-scale, no-flip run reproduces its numbers bit for bit
                term = probs / passes
                scores = term if scores is None else scores + term
    assert scores is not None
    return scores[0]


# ImageNet statistics (RGB, 0-1 range) that every released model was trained with.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def multi_scale_inputs(
    img: np.ndarray, img_sizes: Sequence[int], max_size: int, padding_constant: int
) -> list[torch.Tensor]:
    """The network inputs of one RGB image at every test scale (as the validation data).

    For each short side ``s`` the scale is ``min(s / min(H, W), max_size / max(H, W))``; the
    scaled sides are rounded up to a multiple of ``padding_constant``; the image is resized
    bilinearly (antialiased when shrinking, like PIL) and normalised with ImageNet statistics.

    Args:
        img: ``(H, W, 3)`` uint8 RGB.
        img_sizes: short sides (``DATASET.imgSizes``).
        max_size: cap on the long side (``DATASET.imgMaxSize``).
        padding_constant: sides are multiples of it (``DATASET.padding_constant``).

    Returns:
        one ``(1, 3, h, w)`` float32 tensor per size.
    """
    height, width = img.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255.0
    mean = torch.tensor(_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(_STD).view(1, 3, 1, 1)
    out = []
    for short in img_sizes:
        scale = min(short / min(height, width), max_size / max(height, width))
        size = [
            max(math.ceil(int(side * scale) / padding_constant), 1) * padding_constant
            for side in (height, width)
        ]
        resized = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        out.append((resized - mean) / std)
    return out


def load_segmentation_module(
    model_cfg: Any,
    num_class: int,
    weights_dir: str | Path,
    checkpoint: str,
    device: torch.device,
) -> nn.Module:
    """Builds encoder + decoder from ``weights_dir/{encoder,decoder}_<checkpoint>`` for inference.

    Args:
        model_cfg: the ``cfg.MODEL`` node (``arch_encoder``, ``arch_decoder``, ``fc_dim``).
        num_class: ``cfg.DATASET.num_class``.
        weights_dir: folder with the checkpoint files (``cfg.DIR``).
        checkpoint: file suffix such as ``epoch_20.pth`` (``VAL.checkpoint`` / ``TEST.checkpoint``).
        device: where to put the module.

    Returns:
        a :class:`~mit_semseg.models.SegmentationModule` in eval mode on ``device``.

    Raises:
        FileNotFoundError: naming each missing checkpoint file.
    """
    weights_dir = Path(weights_dir)
    paths = {part: weights_dir / f"{part}_{checkpoint}" for part in ("encoder", "decoder")}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"checkpoint file(s) not found: {', '.join(missing)} (set DIR to the training "
            "output folder and VAL.checkpoint / TEST.checkpoint to e.g. epoch_20.pth)"
        )
    from mit_semseg.models import ModelBuilder, SegmentationModule

    logger.info("loading %s and %s", paths["encoder"], paths["decoder"])
    encoder = ModelBuilder.build_encoder(
        arch=model_cfg.arch_encoder.lower(),
        fc_dim=model_cfg.fc_dim,
        weights=str(paths["encoder"]),
    )
    decoder = ModelBuilder.build_decoder(
        arch=model_cfg.arch_decoder.lower(),
        fc_dim=model_cfg.fc_dim,
        num_class=num_class,
        weights=str(paths["decoder"]),
        use_softmax=True,
    )
    module = SegmentationModule(encoder, decoder, nn.NLLLoss(ignore_index=-1))
    return module.to(device).eval()


# Files picked up when a folder is given (compared case-insensitively).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# Files read as lists of image paths (one per line, or odgt JSON records with ``fpath_img``).
LIST_EXTENSIONS = (".txt", ".lst", ".list", ".odgt")


class ImageReadError(ValueError):
    """An input image cannot be used; the message names the file and the reason."""


def read_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """Reads any common image as ``(H, W, 3)`` uint8 RGB.

    Grayscale is replicated to three channels, an alpha channel is dropped, 16-bit images are
    scaled to 8 bits and float images are clipped to their 0-1 (or 0-255) range.

    Raises:
        ImageReadError: missing, empty, corrupt or unsupported file (the message names it).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    if not data:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    # imdecode instead of imread: works for non-ASCII paths and never prints to stderr itself
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise ImageReadError(f"{path}: not a readable image (corrupt or unsupported format)")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.dtype == np.uint16:
        img = ((img.astype(np.float32) + 128.0) / 257.0).astype(np.uint8)  # 65535 -> 255
    elif img.dtype.kind == "f":
        peak = 1.0 if float(np.nanmax(img)) <= 1.0 else 255.0
        img = (np.clip(np.nan_to_num(img), 0.0, peak) * (255.0 / peak)).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageReadError(f"{path}: unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ImageReadError(f"{path}: unsupported image layout {img.shape}")
    return np.ascontiguousarray(img[:, :, 2::-1])  # BGR(A) -> RGB, alpha dropped


def _read_list_file(path: Path) -> list[Path]:
    """Image paths from a list file; relative entries are taken relative to the list's folder."""
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            try:
                line = json.loads(line)["fpath_img"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ImageReadError(
                    f"{path}, line {number}: expected a path or a JSON record with fpath_img"
                ) from exc
        entry = Path(line).expanduser()
        entries.append(entry if entry.is_absolute() else path.parent / entry)
    return entries


def collect_images(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Expands ``--imgs`` arguments into image files.

    Args:
        inputs: image files (any extension), folders (searched recursively for
            :data:`IMAGE_EXTENSIONS`, case-insensitive) and list files (:data:`LIST_EXTENSIONS`).

    Returns:
        ``(images, problems)``: the files in a stable order without duplicates, and one
        message per argument that could not be used (missing path, empty folder...).
    """
    images: list[Path] = []
    problems: list[str] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
            if not found:
                problems.append(f"{path}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in folder")
            images.extend(found)
        elif path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
            try:
                listed = _read_list_file(path)
            except (OSError, UnicodeDecodeError, ImageReadError) as exc:
                problems.append(f"{path}: cannot read list file ({exc})")
                continue
            if not listed:
                problems.append(f"{path}: list file holds no image paths")
            images.extend(listed)  # missing entries are reported when they are read
        elif path.exists():
            images.append(path)
        else:
            problems.append(f"{path}: no such file or folder")
    seen: set[Path] = set()
    unique = []
    for image in images:
        key = image.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(image)
    return unique, problems


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
