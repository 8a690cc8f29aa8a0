"""A photo sent to the page, checked and then read exactly as ``test.py`` reads an image file.

The checks that need no decoding come first, from the bytes and the image header: the size of
the upload, the format (JPEG, PNG or WebP) and the number of pixels, so that an oversized or
hostile file costs nothing. Then the photo goes through
:class:`~mit_semseg.data.datasets.TestDataset`, the reader of ``test.py``: the same decoder,
EXIF orientation, colour conversions and scaling. Every refusal is a :class:`PhotoError` with
the HTTP status to answer and one line for the page, naming the file.

The bundled example photos (:data:`EXAMPLES`, files in ``examples/``; licences in
``examples/README.md``) are read the same way.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from mit_semseg.data.datasets import TestDataset
from mit_semseg.data.image_io import ImageReadError, read_image

__all__ = [
    "EXAMPLES",
    "EXAMPLES_DIR",
    "FORMATS",
    "Example",
    "Limits",
    "PhotoError",
    "check_photo",
    "display_name",
    "example_photo",
    "file_size",
    "megapixels",
    "read_photo",
]

EXAMPLES_DIR = Path(__file__).parent / "examples"
# what PIL calls the formats the page takes -> the file extension the reader is given
FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}


@dataclass(frozen=True)
class Example:
    """A bundled photo: ``key`` (what the page sends), file, title and credit."""

    key: str
    file: str
    title: str
    credit: str

    @property
    def path(self) -> Path:
        return EXAMPLES_DIR / self.file


EXAMPLES = (
    Example("coffee", "coffee.jpg", "Coffee cup", "Rachel Michetti, CC0"),
    Example("astronaut", "astronaut.jpg", "Astronaut Eileen Collins", "NASA, public domain"),
    Example("cat", "chelsea.jpg", "Chelsea the cat", "Stefan van der Walt, CC0"),
)


@dataclass(frozen=True)
class Limits:
    """The largest photo the server takes.

    Attributes:
        max_bytes: size of the uploaded file.
        max_pixels: width x height, read from the header before decoding.
    """

    max_bytes: int = 20_000_000
    max_pixels: int = 40_000_000

    def describe(self) -> str:
        return f"{file_size(self.max_bytes)}, {megapixels(self.max_pixels)}"


def file_size(num_bytes: int) -> str:
    """``20 MB``, ``350 kB`` (decimal units, three digits at most)."""
    if num_bytes >= 1e6:
        return f"{num_bytes / 1e6:.3g} MB"
    return f"{num_bytes / 1e3:.3g} kB"


def megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.3g} megapixels"


class PhotoError(ValueError):
    """A photo the server does not segment: ``status`` (4xx) and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def display_name(filename: str | None) -> str:
    """The file name the page sent, as messages and downloads show it: no folders, no control
    characters, at most 100 characters; ``photo`` when there is none."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return name[:100] or "photo"


def check_photo(data: bytes, name: str, limits: Limits) -> str:
    """Checks an upload from its bytes and header only, before anything is decoded.

    Returns:
        the file extension of its format (``.jpg``, ``.png`` or ``.webp``).

    Raises:
        PhotoError: empty (400); larger than ``limits`` in bytes or pixels (413); not an
            image, or an image of another format (415); a header that cannot be read (400).
    """
    if not data:
        raise PhotoError(400, f"{name} is empty")
    if len(data) > limits.max_bytes:
        raise PhotoError(413, f"{name} is {file_size(len(data))}, over this server's limit "
                              f"of {file_size(limits.max_bytes)} (mit-semseg-app "
                              "--max-upload-mb)")
    try:
        with warnings.catch_warnings():
            # the pixel limit below is ours; PIL's own bomb warning would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                kind, (width, height) = image.format, image.size
    except UnidentifiedImageError:
        raise PhotoError(415, f"{name} is not an image; the page takes JPEG, PNG or WebP "
                              "photos") from None
    except Image.DecompressionBombError:
        raise PhotoError(413, f"{name} has too many pixels to decode safely; this server's "
                              f"limit is {megapixels(limits.max_pixels)}") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise PhotoError(400, f"{name}: cannot read the image header, the file is corrupt or "
                              f"truncated ({error})") from None
    if kind not in FORMATS:
        raise PhotoError(415, f"{name} is a {kind} image; the page takes JPEG, PNG or WebP "
                              "photos")
    if width * height > limits.max_pixels:
        raise PhotoError(413, f"{name} is {width}x{height} pixels "
                              f"({megapixels(width * height)}), over this server's limit of "
                              f"{megapixels(limits.max_pixels)} (mit-semseg-app "
                              "--max-megapixels)")
    return FORMATS[kind]


def _decode_problem(path: Path) -> str:
    """Why the reader refuses ``path``, without the path (the caller names the upload)."""
    try:
        read_image(path)
    except ImageReadError as error:
        text = str(error)
        prefix = f"{path}: "
        return text[len(prefix):] if text.startswith(prefix) else text
    return "cannot be decoded"


def read_photo(data: bytes, name: str, dataset_options: Any, limits: Limits
               ) -> dict[str, Any]:
    """The photo as ``test.py`` gives an image to the model.

    Args:
        data: the file's bytes.
        name: how to name it in messages (see :func:`display_name`).
        dataset_options: the model's ``DATASET`` scaling keys for the chosen mode
            (:meth:`mit_semseg.app.catalog.ModelChoice.dataset_options`).
        limits: see :func:`check_photo`.

    Returns:
        :class:`~mit_semseg.data.datasets.TestDataset`'s item: ``img_ori`` (the upright RGB
        image) and ``img_data`` (one normalised tensor per scale).

    Raises:
        PhotoError: see :func:`check_photo`; a file the reader cannot decode (truncated,
            corrupt) is a 400.
    """
    extension = check_photo(data, name, limits)
    with tempfile.TemporaryDirectory(prefix="mit_semseg_app_") as folder:
        path = Path(folder) / f"photo{extension}"
        path.write_bytes(data)
        try:
            return TestDataset([{"fpath_img": str(path)}], dataset_options)[0]
        except ImageReadError:
            raise PhotoError(400, f"{name}: {_decode_problem(path)}") from None


def example_photo(key: str) -> Example:
    """The bundled example ``key``.

    Raises:
        PhotoError: no such example (404).
    """
    for example in EXAMPLES:
        if example.key == key:
            return example
    raise PhotoError(404, f"no example photo {key!r}; choose one of "
                          f"{', '.join(e.key for e in EXAMPLES)}")
