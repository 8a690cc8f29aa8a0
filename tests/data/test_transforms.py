import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from mit_semseg.data.transforms import (
    ImageReadError,
    normalize_image,
    read_image,
    read_label,
    resize_image,
    resize_label,
    round_up,
    scaled_size,
    small_input_warning,
)

EXIF_ORIENTATION = 0x0112


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


def test_normalize_equals_torchvision_normalize_bit_for_bit():
    # the original's arithmetic: float32 x / 255, then torchvision's Normalize; every pixel
    # value in every channel (a fused multiply-add is off by one ulp in ~2/3 of them)
    from torchvision import transforms

    values = np.arange(256, dtype=np.uint8)
    image = np.stack([values, values[::-1], np.roll(values, 85)], axis=-1).reshape(16, 16, 3)
    scaled = torch.from_numpy((np.float32(image) / 255.0).transpose(2, 0, 1).copy())
    expected = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])(scaled)
    out = normalize_image(image)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    assert torch.equal(out, expected)


def test_sizes():
    assert [round_up(x, 8) for x in (1, 8, 9, 16)] == [8, 8, 16, 16]
    # short side to 300 unless the long side would pass 1000
    assert scaled_size(384, 512, 300, 1000) == (300, 400)
    assert scaled_size(100, 1000, 300, 1000) == (100, 1000)


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
def _triangle_resize_1d(values: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Antialiased bilinear along ``axis``: a triangle of half-width max(scale, 1) source
    pixels around each output centre, weights renormalised at the borders."""
    values = np.moveaxis(values.astype(np.float64), axis, 0)
    scale = values.shape[0] / size
    support = max(scale, 1.0)
    source_centres = np.arange(values.shape[0]) + 0.5
    out = []
    for i in range(size):
        weights = np.clip(1 - np.abs(source_centres - (i + 0.5) * scale) / support, 0, None)
        out.append(np.tensordot(weights / weights.sum(), values, axes=1))
    return np.moveaxis(np.round(np.stack(out)), 0, axis)


@pytest.mark.parametrize("size", [(11, 17), (8, 16), (45, 70), (20, 70)])
def test_resize_image_is_the_antialiased_bilinear_filter(size):
    # random pixels: any filter narrower than the scale factor (no antialiasing) is far off
    image = np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    height, width = size
    expected = _triangle_resize_1d(_triangle_resize_1d(image, width, 1), height, 0)
    out = resize_image(image, height, width)
    assert out.shape == (height, width, 3) and out.dtype == np.uint8
    # Pillow rounds to uint8 between its horizontal and vertical pass
    assert np.abs(out - expected).max() <= 1


def test_resize_label_is_nearest_at_pixel_centres():
    np.testing.assert_array_equal(resize_label(np.array([[0, 200]], np.uint8), 1, 4),
                                  [[0, 0, 200, 200]])
    # shrinking takes the pixel under each output centre: (i + 0.5) * 2 -> 1, 3, 5
    np.testing.assert_array_equal(resize_label(np.array([[1, 2, 3, 4, 5, 6]], np.uint8), 1, 3),
                                  [[2, 4, 6]])
    np.testing.assert_array_equal(resize_label(np.array([[1], [2], [3]], np.uint16), 5, 1),
                                  [[1], [1], [2], [3], [3]])
    label = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert resize_label(label, 3, 4) is label


@pytest.mark.parametrize("source, target", [(1766, 159), (2930, 643), (37, 90)])
def test_resize_label_samples_what_the_originals_pil_nearest_samples(source, target):
    # (i + 0.5) * source / target lands exactly on a pixel border at some i for the first two
    # pairs; Pillow (the original) and OpenCV's INTER_NEAREST_EXACT round those differently
    ramp = np.tile(np.arange(source, dtype=np.uint16), (2, 1))
    expected = np.asarray(Image.fromarray(ramp).resize((target, 2), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(resize_label(ramp, 2, target), expected)
    np.testing.assert_array_equal(resize_label(np.ascontiguousarray(ramp.T), target, 2),
                                  expected.T)


def test_resize_label_stride_takes_the_centre_of_each_cell():
    label = np.random.default_rng(0).integers(0, 9, (30, 45), dtype=np.uint8)
    full = resize_label(label, 41, 61)
    np.testing.assert_array_equal(resize_label(label, 41, 61, stride=4), full[2::4, 2::4])
    np.testing.assert_array_equal(resize_label(label, 30, 45, stride=3), label[1::3, 1::3])


# ----------------------------------------------------------------------------- EXIF, aspect
# Stored pixels -> what a viewer shows, for each EXIF orientation (TIFF/EXIF 2.3 table).
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


def test_small_input_warning_gives_the_numbers():
    # a 6000x300 panorama at the ADE20K settings: the 1000 px cap leaves a 50 px short side
    message = small_input_warning(300, 6000, (300, 375, 450, 525, 600), 1000, 8)
    assert message is not None
    for part in ("6000x300", "aspect 20.0:1", "scaled to 1000x50", "network input 1000x56",
                 "imgMaxSize 1000", "50 px instead of 300", "6.0x smaller"):
        assert part in message
    assert small_input_warning(6000, 300, (300,), 1000, 8).startswith("300x6000 ")
    # 4:1 keeps 250 px (>= 300 / 2), ordinary photos are far from the limit
    assert small_input_warning(250, 1000, (300, 600), 1000, 8) is None
    assert small_input_warning(384, 512, (300, 600), 1000, 8) is None
