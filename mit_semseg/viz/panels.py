"""The pictures people look at: validation panels (``eval.py`` with ``VAL.visualize``) and
prediction panels (``test.py``), and writing them.

Both share one layout: titled columns separated by a white gap, each image framed, small
images enlarged (pixel replication, so labels stay crisp) and a legend column naming the
classes in view. Writing goes through :func:`save_image`, which encodes in memory
(:func:`encode_image`, also what the app sends) and renames a temporary file into place, so a
crash never leaves a truncated PNG behind.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from mit_semseg.files import atomic_write
from mit_semseg.viz.colorize import colorize
from mit_semseg.viz.legend import legend_rows, make_legend
from mit_semseg.viz.text import put_text, text_scale, text_size

__all__ = ["encode_image", "eval_panel", "prediction_panel", "save_image", "side_by_side",
           "titled"]

# Pictures smaller than this are enlarged by an integer factor, so that a 96 px validation image
# is not a thumbnail next to its legend.
MIN_PANEL_HEIGHT = 288
SEPARATOR = 10  # px of white between columns
_FRAME = 96  # grey level of the frame around each image


def side_by_side(images: Sequence[np.ndarray], gap: int = SEPARATOR) -> np.ndarray:
    """Concatenates RGB images horizontally, top-aligned, padding shorter ones with white.

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


def titled(image: np.ndarray, title: str, scale: float) -> np.ndarray:
    """``image`` under a white title bar with ``title`` centred (left-aligned if wider)."""
    width = text_size(title, scale)[0]
    height = text_size("Ag", scale)[1]  # not the title's own: every column's bar is as high
    bar = np.full((int(round(height * 1.7)), image.shape[1], 3), 255, np.uint8)
    put_text(bar, title, max((image.shape[1] - width) // 2, 0), (bar.shape[0] - height) // 2,
             scale)
    return np.concatenate([bar, image], axis=0)


def _framed(image: np.ndarray) -> np.ndarray:
    out = np.array(image, dtype=np.uint8, copy=True)
    out[[0, -1]] = _FRAME
    out[:, [0, -1]] = _FRAME
    return out


def _enlarged(images: Sequence[np.ndarray], min_height: int) -> list[np.ndarray]:
    """The images enlarged by the integer factor that brings the first to ``min_height``."""
    factor = -(-int(min_height) // max(images[0].shape[0], 1))  # ceil division
    if factor <= 1:
        return list(images)
    return [np.repeat(np.repeat(img, factor, axis=0), factor, axis=1) for img in images]


def _panel(
    columns: Sequence[tuple[str, np.ndarray]],
    legend: tuple[list, int],
    min_height: int,
) -> np.ndarray:
    """Titled, framed, enlarged image columns followed by a titled legend column."""
    images = _enlarged([image for _, image in columns], min_height)
    scale = text_scale(images[0].shape[0])
    parts = [titled(_framed(img), title, scale) for (title, _), img in zip(columns, images)]
    rows, hidden = legend
    parts.append(titled(make_legend(rows, images[0].shape[0], scale, hidden), "classes", scale))
    return side_by_side(parts)


def eval_panel(
    image: np.ndarray,
    label: np.ndarray,
    pred: np.ndarray,
    palette: np.ndarray,
    class_names: Sequence[str] | None = None,
    min_height: int = MIN_PANEL_HEIGHT,
) -> np.ndarray:
    """The validation picture: ``image | ground truth | prediction | legend``.

    The prediction's title gives the share of labeled pixels predicted right; the legend names
    every class covering at least :data:`~mit_semseg.viz.legend.MIN_LEGEND_FRACTION` of the
    ground truth or of the prediction.

    Args:
        image: ``(H, W, 3)`` uint8 RGB input.
        label: ``(H, W)`` ground truth, 0-based, -1 = unlabeled (drawn black).
        pred: ``(H, W)`` prediction, 0-based.
        palette: ``(N, 3)`` uint8 colours.
        class_names: one display name per class; ``None`` = ``class_0``, ``class_1``, ...
        min_height: smaller inputs are enlarged by an integer factor to at least this height.
    """
    if class_names is None:
        class_names = [f"class_{c}" for c in range(len(palette))]
    labeled = np.asarray(label) >= 0
    correct = 100.0 * np.mean(np.asarray(pred)[labeled] == np.asarray(label)[labeled]) \
        if labeled.any() else float("nan")
    columns = [
        ("image", image),
        ("ground truth", colorize(label, palette)),
        (f"prediction ({correct:.1f}% right)", colorize(pred, palette)),
    ]
    return _panel(columns, legend_rows([label, pred], palette, class_names), min_height)


def prediction_panel(
    image: np.ndarray,
    pred: np.ndarray,
    palette: np.ndarray,
    class_names: Sequence[str],
    min_height: int = MIN_PANEL_HEIGHT,
) -> np.ndarray:
    """The test.py picture: ``image | prediction | legend with each class's pixel share``.

    Classes covering less than :data:`~mit_semseg.viz.legend.MIN_LEGEND_FRACTION` of the
    image are counted in a ``+N smaller classes`` line instead of being listed.

    Args:
        image: ``(H, W, 3)`` uint8 RGB input.
        pred: ``(H, W)`` prediction, 0-based.
        palette: ``(N, 3)`` uint8 colours.
        class_names: one display name per class.
        min_height: smaller inputs are enlarged by an integer factor to at least this height.
    """
    columns = [("image", image), ("prediction", colorize(pred, palette))]
    legend = legend_rows([pred], palette, class_names, show_fraction=True)
    return _panel(columns, legend, min_height)


def encode_image(rgb: np.ndarray, extension: str = ".png") -> bytes:
    """An RGB (or single-channel) image encoded in the format of ``extension``.

    Args:
        rgb: ``(H, W, 3)`` uint8 RGB or ``(H, W)`` uint8/uint16 image.
        extension: ``.png``, ``.jpg``, ...

    Raises:
        ValueError: the image cannot be encoded in that format (or the extension is unknown).
    """
    data = rgb[..., ::-1] if rgb.ndim == 3 else rgb  # OpenCV encodes BGR
    try:
        ok, buf = cv2.imencode(extension, np.ascontiguousarray(data))
    except cv2.error:  # e.g. no encoder for the extension
        ok = False
    if not ok:
        raise ValueError(f"could not encode a {rgb.dtype} image of shape {rgb.shape} as "
                         f"{extension}")
    return buf.tobytes()


def save_image(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Writes an RGB (or single-channel) image atomically; the format follows the extension.

    Args:
        path: destination (``.png``, ``.jpg``, ...); parent folders are created.
        rgb: ``(H, W, 3)`` uint8 RGB or ``(H, W)`` uint8/uint16 image.

    Returns:
        the path written.
    """
    path = Path(path)
    try:
        encoded = encode_image(rgb, path.suffix or ".png")
    except ValueError as exc:
        raise OSError(f"could not encode image for {path}") from exc
    atomic_write(path, lambda f: f.write(encoded))
    return path
