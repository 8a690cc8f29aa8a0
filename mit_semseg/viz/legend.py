"""Legends: which colour is which class, for the classes a picture actually shows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mit_semseg.viz.colorize import class_fractions
from mit_semseg.viz.text import put_text, text_size

__all__ = ["MIN_LEGEND_FRACTION", "LegendRow", "legend_rows", "make_legend"]

# Classes covering less of a picture than this are not listed in its legend: on real images
# the prediction has many specks of unlikely classes, and a list of them hides the real ones.
MIN_LEGEND_FRACTION = 0.005

LegendRow = tuple[str, tuple[int, int, int]]  # (text, RGB colour of the swatch)


def legend_rows(
    label_maps: Sequence[np.ndarray],
    palette: np.ndarray,
    class_names: Sequence[str],
    min_fraction: float = MIN_LEGEND_FRACTION,
    show_fraction: bool = False,
) -> tuple[list[LegendRow], int]:
    """The legend of one or more label maps of the same picture (e.g. ground truth and
    prediction): every class covering at least ``min_fraction`` of one of them.

    Args:
        label_maps: ``(H, W)`` maps, 0-based classes, -1 = unlabeled.
        palette: ``(N, 3)`` uint8 RGB colours.
        class_names: one display name per class.
        min_fraction: smallest share of a map's labeled pixels for a class to be listed.
        show_fraction: append the share (of the first map) to each name, e.g. ``wall 41.2%``.

    Returns:
        ``(rows, hidden)``: rows sorted by decreasing share (an ``unlabeled`` row in black last
        when enough pixels are), and how many present classes were left out as too small.
    """
    if len(class_names) < len(palette):
        raise ValueError(f"{len(class_names)} class names for a palette of {len(palette)} colours")
    shares: dict[int, float] = {}
    first: dict[int, float] = {}
    for index, label in enumerate(label_maps):
        for cls, fraction in class_fractions(label, len(palette)):
            shares[cls] = max(shares.get(cls, 0.0), fraction)
            if index == 0:
                first[cls] = fraction
    shown = sorted((c for c in shares if shares[c] >= min_fraction), key=lambda c: -shares[c])
    rows = []
    for cls in shown:
        text = class_names[cls]
        if show_fraction:
            text += f" {100.0 * first.get(cls, 0.0):.1f}%"
        rows.append((text, tuple(int(v) for v in palette[cls])))
    unlabeled = max((float(np.mean(np.asarray(m) < 0)) for m in label_maps), default=0.0)
    if unlabeled >= min_fraction:
        rows.append(("unlabeled", (0, 0, 0)))
    return rows, len(shares) - len(shown)


def make_legend(
    rows: Sequence[LegendRow], height: int, scale: float, hidden: int = 0
) -> np.ndarray:
    """Draws a legend column: a framed colour swatch and a text per row, top to bottom.

    Args:
        rows: ``(text, rgb_colour)`` in display order.
        height: height of the legend image; rows that do not fit are counted in a last
            ``+N smaller`` line instead (rows come largest first).
        scale: font scale (see :func:`mit_semseg.viz.text.text_scale`).
        hidden: smaller classes already left out by the caller, added to that count.

    Returns:
        ``(height, width, 3)`` uint8 RGB image on white, as wide as its longest line.
    """
    line_height = text_size("Ag", scale)[1]
    row_height = int(round(line_height * 1.8))
    capacity = max(int(height) // row_height, 1)
    rows = list(rows)
    if len(rows) + (hidden > 0) > capacity:  # keep the last line for the count
        hidden += len(rows) - (capacity - 1)
        rows = rows[: capacity - 1]
    more = f"+{hidden} smaller class" + ("es" if hidden > 1 else "")
    lines = [text for text, _ in rows] + ([more] if hidden else [])
    swatch = row_height - 2 * max(row_height // 6, 2)
    text_left = swatch + max(swatch // 2, 4)
    width = text_left + max((text_size(t, scale)[0] for t in lines), default=0) + 4
    canvas = np.full((max(int(height), row_height), width, 3), 255, np.uint8)
    for i, text in enumerate(lines):
        top = i * row_height
        if i < len(rows):
            y0 = top + (row_height - swatch) // 2
            canvas[y0:y0 + swatch, :swatch] = 64  # frame, so that white and black classes show
            canvas[y0 + 1:y0 + swatch - 1, 1:swatch - 1] = rows[i][1]
        put_text(canvas, text, text_left, top + (row_height - line_height) // 2, scale)
    return canvas
