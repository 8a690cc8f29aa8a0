import io
import struct
import zlib

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from mit_semseg.app.photos import (
    EXAMPLES,
    EXAMPLES_DIR,
    Limits,
    PhotoError,
    check_photo,
    display_name,
    example_photo,
    file_size,
    read_photo,
)
from mit_semseg.data.datasets import TestDataset

OPTIONS = {"imgSizes": (64, 96), "imgMaxSize": 256, "padding_constant": 8}


def _encoded(fmt: str, size=(60, 40), **save) -> bytes:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    out = io.BytesIO()
    image.save(out, fmt, **save)
    return out.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG header claiming ``width`` x ``height`` and a few bytes of pixel data that could
    not be decoded: only a check that reads nothing but the header can size it."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", b"not pixels")
            + _chunk(b"IEND", b""))


@pytest.mark.parametrize("name,expected", [
    ("photo.jpg", "photo.jpg"), ("../../etc/passwd", "passwd"), ("C:\\Users\\me\\x.png", "x.png"),
    ("bad\x00\nname.jpg", "badname.jpg"), ("", "photo"), (None, "photo"), ("a" * 300, "a" * 100),
])
def test_display_name_keeps_the_file_name_only(name, expected):
    assert display_name(name) == expected


@pytest.mark.parametrize("fmt,extension", [("JPEG", ".jpg"), ("PNG", ".png"), ("WEBP", ".webp")])
def test_jpeg_png_and_webp_are_taken(fmt, extension):
    assert check_photo(_encoded(fmt), "x", Limits()) == extension


@pytest.mark.parametrize("data,status,message", [
    (b"", 400, "p is empty"),
    (b"hello, world\n" * 10, 415, "p is not an image; the page takes JPEG, PNG or WebP photos"),
    (_encoded("GIF"), 415, "p is a GIF image; the page takes JPEG, PNG or WebP photos"),
    (_encoded("BMP"), 415, "p is a BMP image"),
    (_png_header_only(8000, 6000), 413,
     "p is 8000x6000 pixels (48 megapixels), over this server's limit of 40 megapixels "
     "(mit-semseg-app --max-megapixels)"),
    (_png_header_only(20000, 20000), 413,
     "p has too many pixels to decode safely; this server's limit is 40 megapixels"),
    (_encoded("WEBP")[:30], 400, "p: cannot read the image header, the file is corrupt or "
                                 "truncated"),
])
def test_refusals_come_from_the_bytes_and_the_header_alone(data, status, message):
    with pytest.raises(PhotoError) as error:
        check_photo(data, "p", Limits())
    assert error.value.status == status and str(error.value).startswith(message)


def test_the_byte_limit_comes_before_the_header():
    with pytest.raises(PhotoError) as error:
        check_photo(b"x" * 2500, "big.jpg", Limits(max_bytes=2000))
    assert error.value.status == 413
    assert str(error.value) == ("big.jpg is 2.5 kB, over this server's limit of 2 kB "
                                "(mit-semseg-app --max-upload-mb)")
    assert (file_size(20_000_000), file_size(350_000)) == ("20 MB", "350 kB")
    assert Limits().describe() == "20 MB, 40 megapixels"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_a_photo_is_read_as_test_py_reads_its_file(tmp_path, fmt):
    """Same pixels, same scaled tensors as TestDataset on the file; JPEG with an EXIF
    orientation tag is turned upright."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    out = io.BytesIO()
    if fmt == "JPEG":
        exif = image.getexif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to view
        image.save(out, fmt, exif=exif.tobytes(), quality=95)
    else:
        image.save(out, fmt, lossless=True) if fmt == "WEBP" else image.save(out, fmt)
    data = out.getvalue()
    path = tmp_path / f"photo.{fmt.lower()}"
    path.write_bytes(data)
    sample = read_photo(data, "photo", OPTIONS, Limits())
    expected = TestDataset([str(path)], OPTIONS)[0]
    np.testing.assert_array_equal(sample["img_ori"], expected["img_ori"])
    assert len(sample["img_data"]) == 2
    for got, want in zip(sample["img_data"], expected["img_data"]):
        assert torch.equal(got, want)
    if fmt == "JPEG":
        assert sample["img_ori"].shape[:2] == (60, 40)  # upright: portrait
    else:
        np.testing.assert_array_equal(sample["img_ori"], pixels)


def test_a_file_the_reader_cannot_decode_is_named_without_the_server_path():
    noise = np.random.default_rng(2).integers(0, 256, (50, 50, 3), dtype=np.uint8)
    jpeg = cv2.imencode(".jpg", noise)[1].tobytes()
    with pytest.raises(PhotoError) as error:
        read_photo(jpeg[:-200], "holiday.jpg", OPTIONS, Limits())
    assert error.value.status == 400
    assert str(error.value) == "holiday.jpg: truncated JPEG (no end-of-image marker)"
    png = cv2.imencode(".png", noise)[1].tobytes()
    with pytest.raises(PhotoError) as error:
        read_photo(png[:-100], "cut.png", OPTIONS, Limits())
    assert str(error.value) == "cut.png: cannot decode (corrupt, truncated or not an image)"


def test_the_examples_are_small_real_photographs_with_their_licences():
    readme = (EXAMPLES_DIR / "README.md").read_text(encoding="utf-8")
    assert sorted(p.name for p in EXAMPLES_DIR.glob("*.jpg")) == sorted(e.file for e in EXAMPLES)
    for example in EXAMPLES:
        assert example_photo(example.key) is example
        data = example.path.read_bytes()
        assert len(data) < 100_000
        assert check_photo(data, example.file, Limits()) == ".jpg"
        assert example.file in readme and example.credit.split(",")[0] in readme
    with pytest.raises(PhotoError, match="no example photo 'dog'; choose one of coffee"):
        example_photo("dog")
