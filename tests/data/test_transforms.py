import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from mit_semseg.data.transforms import (
    ImageReadError,
    normalize_image,
    read_image,
    read_label,
    resize_label,
    round_up,
    scaled_size,
)


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


def test_normalize_matches_imagenet_formula():
    image = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    expected = (torch.from_numpy(image).permute(2, 0, 1).float() / 255
                - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) \
        / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    out = normalize_image(image)
    assert out.shape == (3, 6, 7) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_sizes_and_nearest_resize():
    assert [round_up(x, 8) for x in (1, 8, 9, 16)] == [8, 8, 16, 16]
    # short side to 300 unless the long side would pass 1000
    assert scaled_size(384, 512, 300, 1000) == (300, 400)
    assert scaled_size(100, 1000, 300, 1000) == (100, 1000)
    label = np.array([[1, 2], [3, 4]], np.uint8)
    big = resize_label(label, 4, 4)
    assert set(np.unique(big)) == {1, 2, 3, 4}
