"""Resizing and normalisation of decoded images and labels.

Everything here works on numpy arrays in HWC layout and RGB channel order; conversion to
tensors happens once, when a batch is assembled.

* Decoding is in :mod:`mit_semseg.data.image_io`.
* Images are resized by Pillow's bilinear filter, the original's: it antialiases when
  shrinking (OpenCV's ``INTER_LINEAR`` does not), and no vectorised resize reproduces its
  fixed-point rounding bit for bit (torchvision's antialiased uint8 resize is off by one
  in about 3% of the values).
* Labels are resized by nearest neighbour with Pillow's sampling rule (the source pixel
  under each output pixel's centre), by index arithmetic.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from PIL import Image

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "normalize_image",
    "normalize_into",
    "resize_image",
    "resize_label",
    "round_up",
    "scaled_size",
    "small_input_warning",
]

# ImageNet statistics in RGB order, on the 0..1 scale (the original's normalisation).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

def round_up(x: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is ``>= x``."""
    return -(-int(x) // multiple) * multiple


def scaled_size(height: int, width: int, short_side: int, max_side: int) -> tuple[int, int]:
    """Target ``(h, w)`` with the short side at ``short_side`` and the long side ``<= max_side``.

    Sizes are truncated to integers, as in the original, and never drop below one pixel.
    """
    scale = min(short_side / min(height, width), max_side / max(height, width))
    return max(1, int(height * scale)), max(1, int(width * scale))


def small_input_warning(
    height: int, width: int, short_sides: Sequence[int], max_side: int, padding: int
) -> str | None:
    """Why an image this shape gives a uselessly small network input, or ``None``.

    The long side is capped at ``max_side``, so a very elongated image (a panorama) ends up
    with a short side far below the ones requested. Below half the smallest requested short
    side (``DATASET.imgSizes``), objects are more than 2x smaller than at the smallest scale
    the model is meant to see; the message gives the numbers and the fix.
    """
    smallest = min(short_sides)
    h, w = scaled_size(height, width, smallest, max_side)
    if 2 * min(h, w) >= smallest:
        return None
    return (
        f"{width}x{height} image (aspect {max(height, width) / min(height, width):.1f}:1) is "
        f"scaled to {w}x{h} (network input {round_up(w, padding)}x{round_up(h, padding)}) "
        f"because imgMaxSize {max_side} caps its long side: its short side is {min(h, w)} px "
        f"instead of {smallest}, so objects are {smallest / min(h, w):.1f}x smaller than the "
        "model expects; raise DATASET.imgMaxSize or cut the image into tiles"
    )


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pillow's bilinear resize of an ``(H, W, 3)`` uint8 image (the original's filter).

    Antialiased when shrinking (the filter widens with the scale factor); a no-op at the same
    size, as in Pillow.
    """
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def _nearest_indices(source: int, target: int) -> np.ndarray:
    # Pillow's NEAREST: the source pixel under the output pixel's centre, (i + 0.5) * s / t
    # in float64 and truncated (cv2's INTER_NEAREST takes i * s / t; INTER_NEAREST_EXACT
    # rounds some exact ties the other way).
    return ((np.arange(target) + 0.5) * (source / target)).astype(np.intp)


def resize_label(label: np.ndarray, height: int, width: int, stride: int = 1) -> np.ndarray:
    """Nearest-neighbour resize of a label map, so no new label values are invented.

    Samples exactly the pixels Pillow's ``NEAREST`` (the original's) samples. With
    ``stride`` > 1 the ``(height, width)`` map is further subsampled at the centre pixel of
    each ``stride x stride`` cell (the original's label downsampling, a second ``NEAREST``
    resize by an integer factor), without building the full-size map.
    """
    if label.shape[:2] == (height, width) and stride == 1:
        return label
    start = stride // 2
    rows = _nearest_indices(label.shape[0], height)[start::stride]
    cols = _nearest_indices(label.shape[1], width)[start::stride]
    return np.take(np.take(label, rows, axis=0), cols, axis=1)


def _normalisation_tables() -> list[np.ndarray]:
    """Per RGB channel, the normalised float32 value of each of the 256 pixel values.

    Computed with the original's float32 operations in its order, ``(x / 255 - mean) / std``
    (numpy division, then torchvision's ``Normalize``), so the tables hold exactly its values;
    a fused ``x * scale + offset`` differs in the last bit for about two thirds of them.
    """
    values = np.arange(256, dtype=np.float32) / np.float32(255.0)
    return [((values - mean) / std).reshape(1, 256) for mean, std in zip(IMAGENET_MEAN,
                                                                          IMAGENET_STD)]


_TABLES = _normalisation_tables()


def normalize_into(image: np.ndarray, out: np.ndarray) -> None:
    """Writes the normalised ``(H, W, 3)`` uint8 RGB ``image`` into ``out`` ``(3, H, W)``.

    ``out`` is a float32 array that may be a strided view (e.g. the top-left corner of a
    padded batch canvas), so no intermediate image is allocated. The values are bit-identical
    to the original's (a table lookup per channel, see :func:`_normalisation_tables`).
    """
    if out.shape != (3, *image.shape[:2]) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 of shape {(3, *image.shape[:2])}, got "
                         f"{out.dtype} {out.shape}")
    for channel, plane in enumerate(cv2.split(image)):
        target = out[channel]
        result = cv2.LUT(plane, _TABLES[channel], dst=target)
        if not np.shares_memory(result, target):  # OpenCV chose to allocate: copy back
            target[...] = result


def normalize_image(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 RGB -> ``(3, H, W)`` float32 tensor, ImageNet-normalised."""
    out = np.empty((3, *image.shape[:2]), np.float32)
    normalize_into(image, out)
    return torch.from_numpy(out)
