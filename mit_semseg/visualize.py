"""Pictures of predictions: colourised label maps, legends, panels and confusion-matrix heat maps.

All images are ``(H, W, 3)`` uint8 **RGB** arrays. Writing goes through :func:`save_image`, which
encodes in memory and renames a temporary file into place, so a crash never leaves a truncated
PNG behind.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

__all__ = [
    "class_fractions",
    "colorize",
    "confusion_matrix_figure",
    "eval_panel",
    "make_legend",
    "prediction_panel",
    "save_image",
    "side_by_side",
    "write_atomic",
]

logger = logging.getLogger(__name__)

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def colorize(label: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Maps class indices to colours.

    Args:
        label: ``(H, W)`` integer map, 0-based classes; negative values (ignore) become black.
        palette: ``(N, 3)`` uint8 RGB colours, row ``c`` = colour of class ``c``.

    Returns:
        ``(H, W, 3)`` uint8 RGB image.
    """
    label = np.asarray(label)
    palette = np.asarray(palette, dtype=np.uint8)
    if palette.ndim != 2 or palette.shape[1] != 3:
        raise ValueError(f"palette must have shape (N, 3), got {palette.shape}")
    if label.size and label.max() >= len(palette):
        raise ValueError(
            f"label value {int(label.max())} has no colour (palette has {len(palette)} entries)"
        )
    # a black row appended at the end serves the ignore label (-1 indexes the last row)
    table = np.concatenate([palette, np.zeros((1, 3), np.uint8)])
    return table[np.where(label < 0, -1, label)]


def class_fractions(pred: np.ndarray, num_class: int) -> list[tuple[int, float]]:
    """Share of pixels per predicted class, largest first (classes with no pixel left out).

    Args:
        pred: ``(H, W)`` predicted class indices in ``[0, num_class)``.
        num_class: number of classes.

    Returns:
        list of ``(class_index, fraction)`` sorted by decreasing fraction, ties by index.
    """
    pred = np.asarray(pred).ravel()
    counts = np.bincount(pred[pred >= 0], minlength=num_class)
    total = max(int(counts.sum()), 1)
    order = sorted(np.flatnonzero(counts), key=lambda c: (-counts[c], c))
    return [(int(c), counts[c] / total) for c in order]


def _text_scale(row_height: int) -> tuple[float, int]:
    scale = max(row_height / 30.0, 0.3)
    return scale, max(int(round(scale * 1.5)), 1)


def make_legend(
    entries: Sequence[tuple[str, Sequence[int], float]],
    height: int,
    width: int = 260,
    max_rows: int = 12,
    title: str | None = None,
) -> np.ndarray:
    """Draws a legend: one row per class with a colour swatch, its name and pixel share.

    Args:
        entries: ``(name, rgb_colour, fraction)`` in display order; only the first ``max_rows``
            are drawn.
        height: height of the legend image (rows are spaced to fit).
        width: width of the legend image.
        max_rows: maximum number of rows.
        title: optional first line.

    Returns:
        ``(height, width, 3)`` uint8 RGB image on a white background.
    """
    height = max(int(height), 1)
    canvas = np.full((height, width, 3), 255, np.uint8)
    shown = list(entries)[:max_rows]
    lines = len(shown) + (1 if title else 0)
    if lines == 0:
        return canvas
    row = int(min(max(height // lines, 10), 40))
    scale, thickness = _text_scale(row)
    y = 0
    if title:
        cv2.putText(canvas, title, (6, y + int(row * 0.75)), _FONT, scale, (0, 0, 0), thickness)
        y += row
    for name, colour, fraction in shown:
        if y + row > height:
            break
        pad = max(row // 8, 1)
        swatch = tuple(int(v) for v in colour)
        cv2.rectangle(canvas, (4, y + pad), (4 + row - 2 * pad, y + row - pad), swatch, -1)
        cv2.rectangle(canvas, (4, y + pad), (4 + row - 2 * pad, y + row - pad), (0, 0, 0), 1)
        text = f"{name} {100.0 * fraction:.1f}%"
        cv2.putText(
            canvas, text, (row + 6, y + int(row * 0.72)), _FONT, scale * 0.8, (0, 0, 0), thickness
        )
        y += row
    return canvas


def side_by_side(images: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Concatenates RGB images horizontally, padding shorter ones at the bottom with white.

    Args:
        images: ``(H_i, W_i, 3)`` uint8 images.
        gap: width in pixels of the white separator between images.

    Returns:
        ``(max H_i, sum W_i + gaps, 3)`` uint8 image.
    """
    if not images:
        raise ValueError("side_by_side needs at least one image")
    height = max(img.shape[0] for img in images)
    parts = []
    for i, img in enumerate(images):
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"image {i} must have shape (H, W, 3), got {img.shape}")
        if img.shape[0] < height:
            pad = np.full((height - img.shape[0], img.shape[1], 3), 255, np.uint8)
            img = np.concatenate([img, pad], axis=0)
        parts.append(img.astype(np.uint8, copy=False))
        if gap and i < len(images) - 1:
            parts.append(np.full((height, gap, 3), 255, np.uint8))
    return np.concatenate(parts, axis=1)


def eval_panel(
    image: np.ndarray, label: np.ndarray, pred: np.ndarray, palette: np.ndarray
) -> np.ndarray:
    """The validation picture: ``[input | ground truth | prediction]``.

    Args:
        image: ``(H, W, 3)`` uint8 RGB input.
        label: ``(H, W)`` ground truth, 0-based, -1 = unlabeled (drawn black).
        pred: ``(H, W)`` prediction, 0-based.
        palette: ``(N, 3)`` uint8 colours.
    """
    return side_by_side([image, colorize(label, palette), colorize(pred, palette)], gap=0)


def prediction_panel(
    image: np.ndarray,
    pred: np.ndarray,
    palette: np.ndarray,
    class_names: Sequence[str],
    max_classes: int = 10,
) -> np.ndarray:
    """The test.py picture: ``[input | colourised prediction | legend of the main classes]``.

    Args:
        image: ``(H, W, 3)`` uint8 RGB input.
        pred: ``(H, W)`` prediction, 0-based.
        palette: ``(N, 3)`` uint8 colours.
        class_names: one display name per class.
        max_classes: legend rows (the classes covering most pixels).
    """
    fractions = class_fractions(pred, len(class_names))
    entries = [(class_names[c], palette[c], f) for c, f in fractions[:max_classes]]
    # very small images get a legend tall enough to read
    legend = make_legend(entries, height=max(image.shape[0], 24 * len(entries), 24))
    return side_by_side([image, colorize(pred, palette), legend])


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Writes a file through ``write(binary_file)`` into a temporary file, then renames it.

    Args:
        path: destination; parent folders are created.
        write: callback that writes the whole content to the open binary file.

    Returns:
        the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_image(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Writes an RGB (or single-channel) image atomically; the format follows the extension.

    Args:
        path: destination (``.png``, ``.jpg``, ...); parent folders are created.
        rgb: ``(H, W, 3)`` uint8 RGB or ``(H, W)`` uint8/uint16 image.

    Returns:
        the path written.
    """
    path = Path(path)
    data = rgb[..., ::-1] if rgb.ndim == 3 else rgb  # OpenCV encodes BGR
    ok, buf = cv2.imencode(path.suffix or ".png", np.ascontiguousarray(data))
    if not ok:
        raise OSError(f"could not encode image for {path}")
    return write_atomic(path, lambda f: f.write(buf.tobytes()))


def confusion_matrix_figure(
    conf: np.ndarray,
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    normalize: bool = True,
) -> Path:
    """Saves a heat map of a confusion matrix (rows = ground truth, columns = prediction).

    Args:
        conf: ``(C, C)`` counts.
        path: output PNG path (written atomically).
        class_names: tick labels; drawn only when there are at most 40 classes.
        normalize: show each row as fractions of its ground-truth pixels.

    Returns:
        the path written.
    """
    # Figure without pyplot: no global backend state, safe in worker processes
    from matplotlib.figure import Figure

    conf = np.asarray(conf, dtype=np.float64)
    num_class = conf.shape[0]
    shown = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1) if normalize else conf
    size = min(4 + 0.25 * num_class, 30)
    fig = Figure(figsize=(size, size * 0.85), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(shown, cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("ground-truth class")
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalize else ""))
    if class_names is not None and num_class <= 40:
        ticks = np.arange(num_class)
        ax.set_xticks(ticks, labels=list(class_names), rotation=90, fontsize=7)
        ax.set_yticks(ticks, labels=list(class_names), fontsize=7)
    fig.tight_layout()
    return write_atomic(path, lambda f: fig.savefig(f, format="png"))
