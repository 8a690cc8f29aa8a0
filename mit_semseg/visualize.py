"""Pictures of predictions: colourised label maps, legends, panels and confusion-matrix heat maps.

All images are ``(H, W, 3)`` uint8 **RGB** arrays. Writing goes through :func:`save_image`, which
encodes in memory and renames a temporary file into place, so a crash never leaves a truncated
PNG behind.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from mit_semseg.files import atomic_write

__all__ = [
    "class_fractions",
    "colorEncode",
    "colorize",
    "confusion_matrix_figure",
    "eval_panel",
    "make_legend",
    "prediction_panel",
    "save_image",
    "side_by_side",
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


def colorEncode(  # noqa: N802 - original public name
    labelmap: np.ndarray, colors: np.ndarray, mode: str = "RGB"
) -> np.ndarray:
    """Original ``mit_semseg.utils.colorEncode``: :func:`colorize`, optionally as BGR.

    Args:
        labelmap: ``(H, W)`` 0-based classes, negative = black.
        colors: ``(N, 3)`` uint8 RGB colours.
        mode: ``"RGB"`` or ``"BGR"`` channel order of the result.
    """
    if mode not in ("RGB", "BGR"):
        raise ValueError(f"mode must be 'RGB' or 'BGR', got {mode!r}")
    rgb = colorize(labelmap, colors)
    return np.ascontiguousarray(rgb[..., ::-1]) if mode == "BGR" else rgb


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


def make_legend(
    entries: Sequence[tuple[str, Sequence[int], float]],
    height: int,
    width: int | None = None,
    max_rows: int = 12,
) -> np.ndarray:
    """Draws a legend: one row per class with a colour swatch, its name and pixel share.

    Args:
        entries: ``(name, rgb_colour, fraction)`` in display order; only the first ``max_rows``
            are drawn.
        height: height of the legend image (rows are spaced to fit, at most 40 px each).
        width: width of the legend image; ``None`` = wide enough for the longest line.
        max_rows: maximum number of rows.

    Returns:
        ``(height, width, 3)`` uint8 RGB image on a white background.
    """
    height = max(int(height), 1)
    shown = list(entries)[:max_rows]
    row = int(min(max(height // max(len(shown), 1), 10), 40))
    scale = row / 40.0
    thickness = 1
    texts = [f"{name} {100.0 * fraction:.1f}%" for name, _, fraction in shown]
    if width is None:
        text_w = max((cv2.getTextSize(t, _FONT, scale, thickness)[0][0] for t in texts), default=0)
        width = row + 12 + text_w
    canvas = np.full((height, width, 3), 255, np.uint8)
    pad = max(row // 8, 1)
    for i, ((_, colour, _), text) in enumerate(zip(shown, texts)):
        y = i * row
        if y + row > height:
            break
        swatch = tuple(int(v) for v in colour)
        corner_a, corner_b = (4, y + pad), (4 + row - 2 * pad, y + row - pad)
        cv2.rectangle(canvas, corner_a, corner_b, swatch, -1)
        cv2.rectangle(canvas, corner_a, corner_b, (0, 0, 0), 1)
        baseline = y + (row + cv2.getTextSize(text, _FONT, scale, thickness)[0][1]) // 2
        cv2.putText(canvas, text, (row + 6, baseline), _FONT, scale, (0, 0, 0), thickness,
                    cv2.LINE_AA)
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
    min_height: int = 256,
) -> np.ndarray:
    """The test.py picture: ``[input | colourised prediction | legend of the main classes]``.

    Args:
        image: ``(H, W, 3)`` uint8 RGB input.
        pred: ``(H, W)`` prediction, 0-based.
        palette: ``(N, 3)`` uint8 colours.
        class_names: one display name per class.
        max_classes: legend rows (the classes covering most pixels).
        min_height: smaller images are enlarged by an integer factor (pixel replication) to
            at least this height, so that tiny inputs stay visible next to the legend.
    """
    fractions = class_fractions(pred, len(class_names))
    entries = [(class_names[c], palette[c], f) for c, f in fractions[:max_classes]]
    colour = colorize(pred, palette)
    factor = -(-min_height // max(image.shape[0], 1))  # ceil division
    if factor > 1:
        image = np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
        colour = np.repeat(np.repeat(colour, factor, axis=0), factor, axis=1)
    legend = make_legend(entries, height=max(image.shape[0], 24 * len(entries), 24))
    return side_by_side([image, colour, legend])


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
    atomic_write(path, lambda f: f.write(buf.tobytes()))
    return path


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
    path = Path(path)
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    return path
