import numpy as np
import pytest
import torch
from PIL import Image

from mit_semseg.data.transforms import (
    normalize_image,
    resize_image,
    resize_label,
    round_up,
    scaled_size,
    small_input_warning,
)


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
