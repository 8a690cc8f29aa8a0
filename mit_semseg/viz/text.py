"""Text on pictures: one font, sized from the picture so that it stays readable at any size."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["put_text", "text_scale", "text_size"]

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_COLOUR = (0, 0, 0)


def text_scale(image_height: int) -> float:
    """Font scale for a picture ``image_height`` pixels tall: about 1/30 of it, 12-36 px."""
    # OpenCV's scale 1.0 draws capitals about 22 px tall
    return float(np.clip(image_height / 600.0, 0.55, 1.6))


def _thickness(scale: float) -> int:
    return 1 if scale < 0.9 else 2


def _measure(text: str, scale: float) -> tuple[int, int, int]:
    (width, height), below_baseline = cv2.getTextSize(text, _FONT, scale, _thickness(scale))
    return width, height, below_baseline


def text_size(text: str, scale: float) -> tuple[int, int]:
    """``(width, height)`` in pixels of ``text`` drawn with :func:`put_text` at ``scale``."""
    width, height, below_baseline = _measure(text, scale)
    return width, height + below_baseline


def put_text(canvas: np.ndarray, text: str, left: int, top: int, scale: float) -> None:
    """Draws black ``text`` into ``canvas`` (RGB uint8, in place) with the top-left corner of
    its box at ``(left, top)``."""
    height = _measure(text, scale)[1]
    cv2.putText(canvas, text, (int(left), int(top) + height), _FONT, scale, _COLOUR,
                _thickness(scale), cv2.LINE_AA)
