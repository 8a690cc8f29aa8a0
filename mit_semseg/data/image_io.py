"""Reading images and label maps from files, with errors that name the file, and the values a
label file stores.

* Decoding is OpenCV's (for RGB and grayscale JPEG and PNG the same pixels as PIL's, and
  faster); images are turned upright by their EXIF orientation tag, labels are not, and the
  image of a labelled sample is used in the orientation its label fits
  (:func:`read_labelled_image`).
* A missing file, a broken symbolic link, an empty, truncated or undecodable file each raise
  an error naming the path (:class:`ImageReadError` or ``FileNotFoundError``).
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

__all__ = [
    "ImageReadError",
    "exif_orientation",
    "label_file_array",
    "missing_path_message",
    "read_image",
    "read_label",
    "read_labelled_image",
]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_PALETTE_COLOUR_TYPE = 3
_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
# A complete JPEG ends with the EOI marker; some writers append a short trailer after it.
_JPEG_TRAILER_SLACK = 4096


class ImageReadError(ValueError):
    """An image or label file exists but cannot be decoded (corrupt, truncated, unsupported)."""


def _read_bytes(path: str | os.PathLike) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(missing_path_message(path)) from None
    except IsADirectoryError:
        raise ImageReadError(f"{path}: is a directory, expected an image file") from None


def _check_complete_jpeg(data: bytes, path: str | os.PathLike) -> None:
    # Older OpenCV builds decode a truncated JPEG into a half-grey image with only a warning.
    if data[:2] == _JPEG_SOI and data.rfind(_JPEG_EOI, max(0, len(data) - _JPEG_TRAILER_SLACK)) < 0:
        raise ImageReadError(f"{path}: truncated JPEG (no end-of-image marker)")


def _decode(data: bytes, path: str | os.PathLike, flags: int) -> np.ndarray:
    if not data:
        raise ImageReadError(f"{path}: empty file")
    _check_complete_jpeg(data, path)
    array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if array is None:
        raise ImageReadError(f"{path}: cannot decode (corrupt, truncated or not an image)")
    return array


# read_labelled_image warns about an ignored orientation tag once per process
_ignored_orientation_reported = False
_EXIF_MARKERS = (b"Exif", b"eXIf", b"EXIF")  # JPEG APP1, PNG chunk, WebP chunk
_TIFF_HEADERS = (b"II*\x00", b"MM\x00*")
_EXIF_ORIENTATION = 0x0112


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) of an encoded image; 1 (as stored) without a tag.

    Files without an EXIF block are recognised from their bytes and not parsed.
    """
    if data[:4] not in _TIFF_HEADERS and not any(m in data for m in _EXIF_MARKERS):
        return 1
    try:
        with Image.open(io.BytesIO(data)) as im:
            value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError):  # unreadable metadata: treat as untagged
        return 1
    return int(value) if value in range(1, 9) else 1


def read_image(path: str | os.PathLike, upright: bool = True) -> np.ndarray:
    """Reads an image as ``(H, W, 3)`` uint8 RGB, upright.

    The EXIF orientation tag (JPEG, PNG, WebP, TIFF) is applied, as photo viewers do; the
    original ignored it, so tagged photos were segmented sideways. ``upright=False`` reads
    the pixels as stored, as the original did (see :func:`read_labelled_image`). Grayscale
    images are replicated to three channels, alpha is dropped, 16-bit images keep their high
    byte (``0x1234`` -> ``0x12``).

    Raises:
        FileNotFoundError: the file does not exist (or is a broken symbolic link).
        ImageReadError: the file cannot be decoded; the message names the file.
    """
    return _image_from_bytes(_read_bytes(path), path, upright)


def read_labelled_image(path: str | os.PathLike, label_shape: Sequence[int]) -> np.ndarray:
    """Reads the image of an (image, label) pair in the orientation its label was drawn on.

    Datasets made for the original (ADE20K) label the pixels as stored, because the original
    ignored EXIF orientation; so the stored image is used whenever it has the label's size,
    which keeps evaluation equal to the original's. The EXIF-upright image is used only when
    it alone has the label's size (a label drawn on the photo as viewers show it). The first
    time an orientation tag is ignored, one warning says so. When neither fits, the stored
    image is returned and the caller reports the mismatch.

    Args:
        path: the image file.
        label_shape: ``(H, W)`` of its label map.
    """
    global _ignored_orientation_reported
    data = _read_bytes(path)
    image = _image_from_bytes(data, path, upright=False)
    if image.shape[:2] == tuple(label_shape):
        orientation = 1 if _ignored_orientation_reported else exif_orientation(data)
        if orientation != 1:
            _ignored_orientation_reported = True
            logger.warning(
                "%s: EXIF orientation %d ignored because the label fits the image as stored "
                "(as the original read it); images of labelled samples are turned upright "
                "only when their label fits the upright image alone (reported once)",
                path, orientation)
        return image
    upright = _image_from_bytes(data, path, upright=True)
    return upright if upright.shape[:2] == tuple(label_shape) else image


def _image_from_bytes(data: bytes, path: str | os.PathLike, upright: bool) -> np.ndarray:
    # Without IMREAD_UNCHANGED OpenCV applies the EXIF orientation (unless told to ignore it);
    # ANYDEPTH/ANYCOLOR keep 16-bit and grayscale pixels as stored (alpha is dropped).
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
    image = _decode(data, path, flags if upright else flags | cv2.IMREAD_IGNORE_ORIENTATION)
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageReadError(f"{path}: unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    raise ImageReadError(f"{path}: unsupported number of channels {image.shape[2]}")


def _palette_indices(data: bytes, path: str | os.PathLike) -> np.ndarray:
    # OpenCV would expand the palette to colours; PIL returns the indices
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.array(im)
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot decode palette PNG ({exc})") from None


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Reads a label map as a 2-D integer array of class indices (0 = unlabeled).

    Accepts 8- and 16-bit single-channel images and palette-mode PNGs (the palette indices
    are the labels). A colour (3- or 4-channel) label is rejected, because its values are
    colours, not class indices.

    Raises:
        FileNotFoundError: the file does not exist.
        ImageReadError: the file cannot be decoded or is not a single-channel label map.
    """
    data = _read_bytes(path)
    is_palette_png = (
        data[:8] == _PNG_SIGNATURE and len(data) > 25 and data[25] == _PNG_PALETTE_COLOUR_TYPE
    )
    if is_palette_png:
        label = _palette_indices(data, path)
    else:
        label = _decode(data, path, cv2.IMREAD_UNCHANGED)
    if label.ndim == 3 and label.shape[2] == 1:
        label = label[:, :, 0]
    if label.ndim != 2:
        raise ImageReadError(
            f"{path}: label maps must be single-channel class indices, got "
            f"{label.shape[2]} channels (convert colour-coded masks to indices first)"
        )
    if label.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(f"{path}: unsupported label pixel type {label.dtype}")
    return label


def missing_path_message(path: str | os.PathLike) -> str:
    """Why a missing ``path`` cannot be read: a broken symbolic link (naming its target) or
    no such file."""
    if os.path.islink(path):
        return f"{path}: broken symbolic link (its target {os.readlink(path)} does not exist)"
    return f"{path}: no such file or folder"


def label_file_array(pred: np.ndarray, num_class: int) -> np.ndarray:
    """A prediction as a label file stores it, in the ADE20K convention :func:`read_label`
    reads: value = class index + 1 (0 stays free for "unlabeled"); uint8, or uint16 when
    there are 256 classes or more.

    Args:
        pred: ``(H, W)`` 0-based class indices.
        num_class: number of classes of the model.
    """
    dtype = np.uint8 if num_class < 256 else np.uint16
    return (np.asarray(pred) + 1).astype(dtype)
