import warnings

import cv2
import numpy as np
import pytest
from large_images import BOMB_SIDE, write_blank_png, write_bmp_header
from PIL import Image, ImageOps

from mit_semseg.data.image_io import (
    MAX_IMAGE_PIXELS,
    ImageReadError,
    ImageTooLargeError,
    label_file_array,
    read_image,
    read_label,
    read_labelled_image,
)

EXIF_ORIENTATION = 0x0112


UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),  # stored rotated 90 degrees counter-clockwise
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


def _jpeg_with_orientation(path, image: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    Image.fromarray(image).save(path, quality=95, exif=exif)



def test_read_image_returns_rgb(tmp_path):
    image = np.zeros((4, 5, 3), np.uint8)
    image[..., 0] = 200  # red in RGB
    cv2.imwrite(str(tmp_path / "a.png"), image[..., ::-1])
    out = read_image(tmp_path / "a.png")
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, image)


def test_grayscale_and_rgba_become_rgb(tmp_path):
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.repeat(gray[..., None], 3, 2))
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 2], rgba[..., 3] = 90, 10  # blue, nearly transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = read_image(tmp_path / "rgba.png")
    assert out.shape == (4, 5, 3)
    assert (out[..., 2] == 90).all() and (out[..., :2] == 0).all()


def test_missing_and_corrupt_images_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        read_image(tmp_path / "nope.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match="bad.jpg"):
        read_image(tmp_path / "bad.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        read_image(tmp_path / "empty.png")


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_truncated_image_is_an_error(tmp_path, ext):
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    ok, data = cv2.imencode(ext, image)
    assert ok
    path = tmp_path / f"t{ext}"
    path.write_bytes(data.tobytes()[: len(data) // 2])
    with pytest.raises(ImageReadError, match=f"t{ext}"):
        read_image(path)


def test_read_label_8_16_bit_and_palette(tmp_path):
    label = np.array([[0, 1, 2], [3, 150, 7]], np.uint8)
    cv2.imwrite(str(tmp_path / "l8.png"), label)
    np.testing.assert_array_equal(read_label(tmp_path / "l8.png"), label)
    wide = np.array([[0, 300], [1000, 2]], np.uint16)
    cv2.imwrite(str(tmp_path / "l16.png"), wide)
    out = read_label(tmp_path / "l16.png")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, wide)
    # palette PNG whose colours are unrelated to the indices: indices must come back
    pal = Image.fromarray(label, "L").convert("P")
    pal.putpalette(list(np.random.default_rng(1).integers(0, 256, 768)))
    pal.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    np.testing.assert_array_equal(read_label(tmp_path / "p.png"), label)


def test_colour_label_is_rejected(tmp_path):
    cv2.imwrite(str(tmp_path / "rgb.png"), np.zeros((3, 3, 3), np.uint8))
    with pytest.raises(ImageReadError, match="rgb.png.*single-channel"):
        read_label(tmp_path / "rgb.png")


def test_16_bit_images_keep_the_high_byte(tmp_path):
    rgb = np.full((3, 4, 3), 0x1234, np.uint16)
    rgb[1, 2] = [0xFFFF, 0x00FF, 0xAB00]
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb[..., ::-1])
    out = read_image(tmp_path / "rgb16.png")
    assert out.dtype == np.uint8
    assert (out[0, 0] == 0x12).all()
    np.testing.assert_array_equal(out[1, 2], [0xFF, 0x00, 0xAB])
    gray = np.full((3, 4), 0x1234, np.uint16)
    cv2.imwrite(str(tmp_path / "gray16.png"), gray)
    assert (read_image(tmp_path / "gray16.png") == 0x12).all()


# ----------------------------------------------------------------------------- resizing
@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_exif_orientation_is_applied_to_images(tmp_path, orientation):
    rng = np.random.default_rng(orientation)
    image = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    path = tmp_path / f"o{orientation}.jpg"
    _jpeg_with_orientation(path, image, orientation)
    with Image.open(path) as im:
        assert im.getexif()[EXIF_ORIENTATION] == orientation
        stored = np.asarray(im.convert("RGB"))  # PIL decodes without applying the tag
        upright = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    expected = UPRIGHT[orientation](stored)
    np.testing.assert_array_equal(expected, upright)  # the table agrees with Pillow's
    out = read_image(path)
    assert out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)


def test_exif_orientation_is_not_applied_to_labels(tmp_path):
    label = np.arange(12, dtype=np.uint8).reshape(3, 4)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    Image.fromarray(label, "L").save(tmp_path / "l.png", exif=exif)
    assert Image.open(tmp_path / "l.png").getexif()[EXIF_ORIENTATION] == 6
    np.testing.assert_array_equal(read_label(tmp_path / "l.png"), label)




@pytest.mark.parametrize("num_class,dtype", [(150, np.uint8), (255, np.uint8), (256, np.uint16),
                                             (300, np.uint16)])
def test_label_file_array_is_class_plus_one_and_reads_back(tmp_path, num_class, dtype):
    pred = np.array([[0, 1], [num_class - 1, 7]])
    values = label_file_array(pred, num_class)
    assert values.dtype == dtype
    np.testing.assert_array_equal(values, pred + 1)
    path = tmp_path / "labels.png"
    assert cv2.imwrite(str(path), values)
    np.testing.assert_array_equal(read_label(path), pred + 1)  # 0 stays "unlabeled"


# ------------------------------------------------------------------- pixel limit (bombs)
def _no_decoding(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the file was decoded")

    monkeypatch.setattr(cv2, "imdecode", refuse)
    monkeypatch.setattr(Image.Image, "load", refuse)


def test_a_decompression_bomb_is_refused_from_its_header_before_decoding(tmp_path, monkeypatch):
    bomb = write_blank_png(tmp_path / "bomb.png")  # 400 million pixels in ~50 KB
    assert bomb.stat().st_size < 100_000
    _no_decoding(monkeypatch)
    for read in (read_image, read_label, lambda p: read_labelled_image(p, (BOMB_SIDE,) * 2)):
        with pytest.raises(ImageTooLargeError) as info:
            read(bomb)  # the default limit, Pillow's
        assert str(info.value).startswith(f"{bomb}: 20000x20000 = 400,000,000 pixels")
        assert f"{MAX_IMAGE_PIXELS:,}" in str(info.value)
    assert issubclass(ImageTooLargeError, ImageReadError)  # readers skip it like any other


def test_the_limit_counts_pixels_and_none_lifts_it(tmp_path):
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), np.zeros((50, 100, 3), np.uint8))
    assert read_image(path, max_pixels=5000).shape == (50, 100, 3)
    cv2.imwrite(str(tmp_path / "label.png"), np.zeros((50, 100), np.uint8))
    assert read_label(tmp_path / "label.png", max_pixels=None).shape == (50, 100)
    with pytest.raises(ImageTooLargeError, match="100x50 = 5,000 pixels, more than the limit "
                                                 "of 4,999"):
        read_image(path, max_pixels=4999)


def test_jpeg_size_is_read_past_other_segments(tmp_path, monkeypatch):
    """The frame header of a JPEG may follow kilobytes of metadata (EXIF, ICC profile)."""
    path = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[0x010E] = "x" * 30_000  # ImageDescription: a 30 KB APP1 segment before the frame
    Image.fromarray(np.zeros((30, 70, 3), np.uint8)).save(path, exif=exif, progressive=True)
    with pytest.raises(ImageTooLargeError, match="70x30 = 2,100 pixels"):
        read_image(path, max_pixels=2099)
    # a header-only JPEG declaring 30000x30000: refused by its size, not as a broken file
    frame = b"\xff\xc0\x00\x11\x08" + (30000).to_bytes(2, "big") * 2 + b"\x03" + bytes(9)
    (tmp_path / "big.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x04ab" + frame + b"\xff\xd9")
    _no_decoding(monkeypatch)
    with pytest.raises(ImageTooLargeError, match="30000x30000"):
        read_image(tmp_path / "big.jpg")


def test_other_formats_are_measured_by_pillow(tmp_path, monkeypatch):
    _no_decoding(monkeypatch)
    # over the default limit but under Pillow's own refusal (twice as much): our message
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(ImageTooLargeError, match="10000x9000 = 90,000,000 pixels"):
            read_image(write_bmp_header(tmp_path / "a.bmp", 10000, 9000))
    # over Pillow's own limit, which refuses to give the size: its message, named by path
    with pytest.raises(ImageTooLargeError, match=r"b\.bmp: too many pixels \(Image size "
                                                 r"\(400000000 pixels\)"):
        read_image(write_bmp_header(tmp_path / "b.bmp", BOMB_SIDE, BOMB_SIDE))
