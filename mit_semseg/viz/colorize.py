"""Label maps as colours, and how much of a map each class covers.

All images are ``(H, W, 3)`` uint8 **RGB** arrays; label maps hold 0-based classes with negative
values (-1) for unlabeled pixels.
"""

from __future__ import annotations

import numpy as np

__all__ = ["class_fractions", "colorEncode", "colorize"]


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


def class_fractions(label: np.ndarray, num_class: int) -> list[tuple[int, float]]:
    """Share of the labeled pixels per class, largest first (classes with no pixel left out).

    Args:
        label: ``(H, W)`` class indices in ``[0, num_class)``; negative values are not counted.
        num_class: number of classes.

    Returns:
        list of ``(class_index, fraction)`` sorted by decreasing fraction, ties by index.
    """
    label = np.asarray(label).ravel()
    counts = np.bincount(label[label >= 0], minlength=num_class)
    total = max(int(counts.sum()), 1)
    order = sorted(np.flatnonzero(counts), key=lambda c: (-counts[c], c))
    return [(int(c), counts[c] / total) for c in order]
