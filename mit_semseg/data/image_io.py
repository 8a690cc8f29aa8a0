"""Reading images and label maps from files, with errors that name the file, and the values a
label file stores.

* Decoding is OpenCV's (for RGB and grayscale JPEG and PNG the same pixels as PIL's, and
  faster); images are turned upright by their EXIF orientation tag, labels are not, and the
  image of a labelled sample is used in the orientation its label fits
  (:func:`read_labelled_image`).
* A missing file, a broken symbolic link, an empty, truncated or undecodable file each raise
  an error naming the path (:class:`ImageReadError` or ``FileNotFoundError``).
* A file whose header declares more pixels than ``max_pixels`` (a "decompression bomb": a
  400 KB PNG can declare 20000x20000 pixels, 1.2 GB once decoded) is refused before anything
  is decoded (:class:`ImageTooLargeError`). The size comes from the header of a PNG or JPEG
  (read here) or of any other format Pillow knows (its lazy ``Image.open``); a format only
  OpenCV reads is checked once decoded, OpenCV's own limit (2**30 pixels) bounding the
  decoding.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from typing import BinaryIO

import cv2
import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_IMAGE_PIXELS",
    "ImageReadError",
    "ImageTooLargeError",
    "check_image_size",
    "exif_orientation",
    "label_file_array",
    "missing_path_message",
    "read_image",
    "read_label",
    "read_labelled_image",
]

# The default pixel limit of every reader: Pillow's own default (PIL.Image.MAX_IMAGE_PIXELS,
# 1024**3 // 4 // 3, about 89.5 million pixels, e.g. 9459x9459), above which it warns of a
# decompression bomb. DATASET.max_image_pixels (mit_semseg/config/defaults.py) has this value.
MAX_IMAGE_PIXELS = 89_478_485

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_PALETTE_COLOUR_TYPE = 3
_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
# A complete JPEG ends with the EOI marker; some writers append a short trailer after it.
_JPEG_TRAILER_SLACK = 4096


class ImageReadError(ValueError):
    """An image or label file exists but cannot be decoded (corrupt, truncated, unsupported)."""


class ImageTooLargeError(ImageReadError):
    """An image or label file declares more pixels than the reader's limit; nothing was
    decoded."""


# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic...): their segment
# holds the picture's size. 0xC4 (Huffman tables), 0xC8 (reserved) and 0xCC (arithmetic
# coding conditions) are other segments.
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# markers without a length field: TEM, RST0-7, SOI
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})
_JPEG_SOS, _JPEG_EOI_MARKER = 0xDA, 0xD9


def _png_size(stream: BinaryIO) -> tuple[int, int] | None:
    head = stream.read(24)  # signature, then the IHDR chunk: length, type, width, height
    if len(head) < 24 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _jpeg_size(stream: BinaryIO) -> tuple[int, int] | None:
    """The size in the first start-of-frame segment; the segments before it are skipped by
    their length, so only their headers are read."""
    if stream.read(2) != _JPEG_SOI:
        return None
    while True:
        if stream.read(1) != b"\xff":
            return None  # not at a marker: corrupt
        marker = stream.read(1)
        while marker == b"\xff":  # fill bytes
            marker = stream.read(1)
        if not marker or marker[0] in (_JPEG_SOS, _JPEG_EOI_MARKER):
            return None  # no frame header before the image data
        if marker[0] in _JPEG_STANDALONE:
            continue
        length = int.from_bytes(stream.read(2), "big")
        if length < 2:
            return None
        if marker[0] in _JPEG_FRAME_MARKERS:
            frame = stream.read(5)  # sample precision, height, width
            height, width = int.from_bytes(frame[1:3], "big"), int.from_bytes(frame[3:5], "big")
            # a height of 0 is given later (DNL marker): left to the decoder's own checks
            return (width, height) if len(frame) == 5 and height else None
        stream.seek(length - 2, os.SEEK_CUR)


def _declared_size(stream: BinaryIO) -> tuple[int, int] | None:
    """See :func:`check_image_size`; Pillow's refusal is raised without the path."""
    for parse in (_png_size, _jpeg_size):
        stream.seek(0)
        size = parse(stream)
        if size is not None:
            return size
    stream.seek(0)
    try:
        with Image.open(stream) as image:
            return image.size
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"too many pixels ({exc})") from None
    except (OSError, ValueError, SyntaxError):  # not an image Pillow knows, or broken
        return None


def _too_large(path: str | os.PathLike, size: tuple[int, int], max_pixels: int) -> str:
    width, height = size
    return (f"{path}: {width}x{height} = {width * height:,} pixels, more than the limit of "
            f"{max_pixels:,} (DATASET.max_image_pixels); not decoded")


def check_image_size(stream: BinaryIO, path: str | os.PathLike, max_pixels: int | None
                     ) -> tuple[int, int] | None:
    """``(width, height)`` that the header of the encoded image ``stream`` declares, checked
    against ``max_pixels`` (None: no limit) without decoding anything.

    PNG and JPEG headers are read here, other formats with Pillow's lazy ``Image.open``; the
    stream is left at an unspecified position.

    Returns:
        The size, or None when the header is broken or of a format Pillow does not know.

    Raises:
        ImageTooLargeError: more than ``max_pixels`` pixels (the message names ``path`` and
            the size), or more than Pillow's own limit (twice ``PIL.Image.MAX_IMAGE_PIXELS``),
            which keeps it from reading the size of a format not read here.
    """
    try:
        size = _declared_size(stream)
    except ImageTooLargeError as exc:
        raise ImageTooLargeError(f"{path}: {exc}") from None
    if size is not None and max_pixels is not None and size[0] * size[1] > max_pixels:
        raise ImageTooLargeError(_too_large(path, size, max_pixels))
    return size


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


def _decode(data: bytes, path: str | os.PathLike, flags: int, max_pixels: int | None
            ) -> np.ndarray:
    if not data:
        raise ImageReadError(f"{path}: empty file")
    measured = max_pixels is None or check_image_size(io.BytesIO(data), path, max_pixels)
    _check_complete_jpeg(data, path)
    array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if array is None:
        raise ImageReadError(f"{path}: cannot decode (corrupt, truncated or not an image)")
    height, width = array.shape[:2]
    if not measured and width * height > max_pixels:  # a format only OpenCV reads
        raise ImageTooLargeError(_too_large(path, (width, height), max_pixels))
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
    # unreadable metadata, or a picture over Pillow's own pixel limit: treat as untagged
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return 1
    return int(value) if value in range(1, 9) else 1


def read_image(path: str | os.PathLike, upright: bool = True,
               max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Reads an image as ``(H, W, 3)`` uint8 RGB, upright.

    The EXIF orientation tag (JPEG, PNG, WebP, TIFF) is applied, as photo viewers do; the
    original ignored it, so tagged photos were segmented sideways. ``upright=False`` reads
    the pixels as stored, as the original did (see :func:`read_labelled_image`). Grayscale
    images are replicated to three channels, alpha is dropped, 16-bit images keep their high
    byte (``0x1234`` -> ``0x12``).

    Args:
        path: the file.
        upright: apply the EXIF orientation.
        max_pixels: refuse, before decoding, an image of more pixels (None: no limit).

    Raises:
        FileNotFoundError: the file does not exist (or is a broken symbolic link).
        ImageReadError: the file cannot be decoded; the message names the file.
        ImageTooLargeError: more than ``max_pixels`` pixels (an ``ImageReadError``).
    """
    return _image_from_bytes(_read_bytes(path), path, upright, max_pixels)


def read_labelled_image(path: str | os.PathLike, label_shape: Sequence[int],
                        max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
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
        max_pixels: as :func:`read_image`.
    """
    global _ignored_orientation_reported
    data = _read_bytes(path)
    image = _image_from_bytes(data, path, False, max_pixels)
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
    upright = _image_from_bytes(data, path, True, max_pixels)
    return upright if upright.shape[:2] == tuple(label_shape) else image


def _image_from_bytes(data: bytes, path: str | os.PathLike, upright: bool,
                      max_pixels: int | None) -> np.ndarray:
    # Without IMREAD_UNCHANGED OpenCV applies the EXIF orientation (unless told to ignore it);
    # ANYDEPTH/ANYCOLOR keep 16-bit and grayscale pixels as stored (alpha is dropped).
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
    image = _decode(data, path, flags if upright else flags | cv2.IMREAD_IGNORE_ORIENTATION,
                    max_pixels)
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageReadError(f"{path}: unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    raise ImageReadError(f"{path}: unsupported number of channels {image.shape[2]}")


def _palette_indices(data: bytes, path: str | os.PathLike, max_pixels: int | None
                     ) -> np.ndarray:
    # OpenCV would expand the palette to colours; PIL returns the indices
    if max_pixels is not None:
        check_image_size(io.BytesIO(data), path, max_pixels)
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.array(im)
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot decode palette PNG ({exc})") from None
    except Image.DecompressionBombError as exc:  # a max_pixels above Pillow's own limit
        raise ImageTooLargeError(f"{path}: too many pixels for Pillow ({exc})") from None


def read_label(path: str | os.PathLike, max_pixels: int | None = MAX_IMAGE_PIXELS
               ) -> np.ndarray:
    """Reads a label map as a 2-D integer array of class indices (0 = unlabeled).

    Accepts 8- and 16-bit single-channel images and palette-mode PNGs (the palette indices
    are the labels). A colour (3- or 4-channel) label is rejected, because its values are
    colours, not class indices.

    Args:
        path: the file.
        max_pixels: refuse, before decoding, a label map of more pixels (None: no limit);
            a palette-mode PNG, which Pillow decodes, is also refused above Pillow's own
            limit (twice ``PIL.Image.MAX_IMAGE_PIXELS``).

    Raises:
        FileNotFoundError: the file does not exist.
        ImageReadError: the file cannot be decoded or is not a single-channel label map.
        ImageTooLargeError: more than ``max_pixels`` pixels (an ``ImageReadError``).
    """
    data = _read_bytes(path)
    is_palette_png = (
        data[:8] == _PNG_SIGNATURE and len(data) > 25 and data[25] == _PNG_PALETTE_COLOUR_TYPE
    )
    if is_palette_png:
        label = _palette_indices(data, path, max_pixels)
    else:
        label = _decode(data, path, cv2.IMREAD_UNCHANGED, max_pixels)
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
