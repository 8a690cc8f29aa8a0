import cv2
import numpy as np
import pytest

from mit_semseg.viz.colorize import colorize
from mit_semseg.viz.panels import (
    MIN_PANEL_HEIGHT,
    SEPARATOR,
    encode_image,
    eval_panel,
    prediction_panel,
    save_image,
    side_by_side,
    titled,
)

PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], np.uint8)
NAMES = ["a", "b", "c", "d"]


def _scene(height=20, width=30):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    label = np.zeros((height, width), np.int64)
    label[:, width // 2:] = 1
    label[0] = -1
    pred = label.clip(0)
    pred[-4:, :4] = 2
    return image, label, pred


def _columns(panel: np.ndarray, top: int) -> list[tuple[int, int]]:
    """[start, end) of the runs of columns that are not all white below ``top``."""
    ink = (panel[top:] != 255).any(axis=(0, 2))
    edges = np.flatnonzero(np.diff(np.concatenate([[0], ink.astype(int), [0]])))
    return list(zip(edges[::2], edges[1::2]))


def test_side_by_side_pads_and_separates():
    a = np.zeros((4, 3, 3), np.uint8)
    b = np.zeros((2, 5, 3), np.uint8)
    out = side_by_side([a, b], gap=2)
    assert out.shape == (4, 3 + 2 + 5, 3)
    assert (out[:, 3:5] == 255).all()  # separator
    assert (out[2:, 5:] == 255).all()  # padding under the shorter image
    assert (out[:2, 5:] == 0).all()
    with pytest.raises(ValueError, match=r"image 1 must have shape \(H, W, 3\)"):
        side_by_side([a, np.zeros((4, 3), np.uint8)])


def test_titled_puts_the_title_above_the_image():
    image = np.zeros((50, 200, 3), np.uint8)
    out = titled(image, "prediction", 0.6)
    bar = out.shape[0] - 50
    assert 10 < bar < 40
    np.testing.assert_array_equal(out[bar:], image)
    ink = np.argwhere((out[:bar] < 128).any(axis=-1))
    assert len(ink) > 30
    assert abs(ink[:, 1].mean() - 100) < 15  # centred
    # the same bar height whatever the letters, so that the columns of a panel line up
    assert titled(image, "classes", 0.6).shape == out.shape
    assert titled(image, "(gjp)", 0.6).shape == out.shape


def test_eval_panel_layout_enlarged_framed_titled_with_a_legend():
    image, label, pred = _scene()
    panel = eval_panel(image, label, pred, PALETTE, NAMES)
    factor = -(-MIN_PANEL_HEIGHT // 20)  # 15: a 20 px image is enlarged to 300 px
    size = (20 * factor, 30 * factor)
    top = panel.shape[0] - size[0]  # height of the title bar
    assert 10 < top < 60
    columns = _columns(panel, top)
    # image, ground truth, prediction, legend, separated by white gaps
    assert [end - start for start, end in columns[:3]] == [size[1]] * 3
    assert [columns[i + 1][0] - columns[i][1] for i in range(3)] == [SEPARATOR] * 3
    expected = [image, colorize(label, PALETTE), colorize(pred, PALETTE)]
    for (start, end), picture in zip(columns, expected):
        shown = panel[top:, start:end]
        assert (shown[0] == 96).all() and (shown[:, -1] == 96).all()  # frame
        big = np.repeat(np.repeat(picture, factor, 0), factor, 1)
        np.testing.assert_array_equal(shown[1:-1, 1:-1], big[1:-1, 1:-1])
    # every title bar has text above its column (the legend's too)
    for start, end in columns[:3] + [(columns[3][0], panel.shape[1])]:
        assert (panel[:top, start:end] < 128).any()
    # the legend shows the swatches of the classes in view, largest first, then unlabeled
    legend = panel[top:, columns[3][0]:]
    rows = [np.flatnonzero(np.all(legend == c, axis=-1).any(axis=1))
            for c in (PALETTE[0], PALETTE[1], PALETTE[2], (0, 0, 0))]
    assert all(len(r) for r in rows[:3])
    assert rows[0].min() < rows[1].min() < rows[2].min()
    assert not np.all(legend == PALETTE[3], axis=-1).any()  # class d is not in view


def test_eval_panel_keeps_large_images_at_their_size():
    image, label, pred = _scene(MIN_PANEL_HEIGHT, 40)
    panel = eval_panel(image, label, pred, PALETTE)  # names default to class_<i>
    assert panel.shape[0] - MIN_PANEL_HEIGHT < 60
    assert [e - s for s, e in _columns(panel, panel.shape[0] - MIN_PANEL_HEIGHT)][:3] == [40] * 3


def test_prediction_panel_layout():
    image, _, pred = _scene(100, 30)
    panel = prediction_panel(image, pred, PALETTE, NAMES, min_height=0)  # not enlarged
    top = panel.shape[0] - 100
    columns = _columns(panel, top)
    assert [end - start for start, end in columns[:2]] == [30, 30]
    assert columns[1][0] - columns[0][1] == SEPARATOR
    np.testing.assert_array_equal(panel[top + 1:-1, columns[1][0] + 1:columns[1][1] - 1],
                                  colorize(pred, PALETTE)[1:-1, 1:-1])
    assert len(columns) > 2  # and the legend


def test_prediction_panel_leaves_negligible_classes_out_of_the_legend():
    image = np.zeros((300, 300, 3), np.uint8)
    pred = np.zeros((300, 300), np.int64)
    pred[:150] = 1
    pred[:2, :2] = 2  # 4 pixels: 0.004% of the image
    panel = prediction_panel(image, pred, PALETTE, NAMES)
    legend = panel[:, 2 * 300 + 2 * SEPARATOR:]
    assert np.all(legend == PALETTE[0], axis=-1).any()
    assert np.all(legend == PALETTE[1], axis=-1).any()
    assert not np.all(legend == PALETTE[2], axis=-1).any()


def test_save_image_roundtrip_rgb_and_16bit(tmp_path):
    rgb = np.zeros((5, 6, 3), np.uint8)
    rgb[..., 0] = 200  # red in RGB
    path = save_image(tmp_path / "sub" / "x.png", rgb)
    back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(back[..., ::-1], rgb)
    lab = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000
    back16 = cv2.imread(str(save_image(tmp_path / "l.png", lab)), cv2.IMREAD_UNCHANGED)
    assert back16.dtype == np.uint16
    np.testing.assert_array_equal(back16, lab)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.png", "sub"]  # no temp files


def test_encode_image_gives_the_bytes_save_image_writes(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    encoded = encode_image(rgb)
    assert encoded == save_image(tmp_path / "x.png", rgb).read_bytes()
    decoded = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(decoded[..., ::-1], rgb)
    jpeg = encode_image(rgb, ".jpg")
    assert jpeg[:2] == b"\xff\xd8"


def test_an_image_that_cannot_be_encoded_is_named(tmp_path):
    with pytest.raises(ValueError, match="uint8 image of shape \\(2, 2\\) as .nosuch"):
        encode_image(np.zeros((2, 2), np.uint8), ".nosuch")
    with pytest.raises(OSError, match="could not encode image for .*x.nosuch"):
        save_image(tmp_path / "x.nosuch", np.zeros((2, 2), np.uint8))
    assert not list(tmp_path.iterdir())
