import cv2
import numpy as np
import pytest

from mit_semseg.visualize import (
    class_fractions,
    colorEncode,
    colorize,
    confusion_matrix_figure,
    eval_panel,
    make_legend,
    prediction_panel,
    save_image,
    side_by_side,
)

PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], np.uint8)


def test_colorize_maps_classes_and_blacks_out_ignore():
    label = np.array([[0, 1], [3, -1]])
    out = colorize(label, PALETTE)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0], PALETTE[0])
    np.testing.assert_array_equal(out[0, 1], PALETTE[1])
    np.testing.assert_array_equal(out[1, 0], PALETTE[3])
    np.testing.assert_array_equal(out[1, 1], [0, 0, 0])


def test_color_encode_modes():
    label = np.array([[0, -1]])
    np.testing.assert_array_equal(colorEncode(label, PALETTE), [[PALETTE[0], [0, 0, 0]]])
    bgr = colorEncode(label, PALETTE, mode="BGR")
    np.testing.assert_array_equal(bgr[0, 0], PALETTE[0][::-1])
    with pytest.raises(ValueError, match="mode"):
        colorEncode(label, PALETTE, mode="HSV")


def test_colorize_rejects_label_without_colour():
    with pytest.raises(ValueError, match="label value 4 has no colour"):
        colorize(np.array([[4]]), PALETTE)


def test_class_fractions_sorted_and_sum_to_one():
    pred = np.array([[2, 2, 2], [0, 0, 1]])
    fr = class_fractions(pred, 4)
    assert [c for c, _ in fr] == [2, 0, 1]
    assert fr[0][1] == pytest.approx(0.5)
    assert sum(f for _, f in fr) == pytest.approx(1.0)


def test_side_by_side_pads_and_separates():
    a = np.zeros((4, 3, 3), np.uint8)
    b = np.zeros((2, 5, 3), np.uint8)
    out = side_by_side([a, b], gap=2)
    assert out.shape == (4, 3 + 2 + 5, 3)
    assert (out[:, 3:5] == 255).all()  # separator
    assert (out[2:, 5:] == 255).all()  # padding under the shorter image
    assert (out[:2, 5:] == 0).all()


def test_make_legend_draws_swatches():
    legend = make_legend([("wall", (255, 0, 0), 0.7), ("sky", (0, 0, 255), 0.3)], height=60)
    assert legend.shape[0] == 60 and 60 < legend.shape[1] < 200
    long = make_legend([("a very long class name indeed", (1, 2, 3), 1.0)], height=60)
    assert long.shape[1] > legend.shape[1] + 50  # sized to fit the text
    red = np.all(legend == [255, 0, 0], axis=-1)
    blue = np.all(legend == [0, 0, 255], axis=-1)
    assert red.sum() > 20 and blue.sum() > 20
    # the first row holds the first entry: its swatch lies above the second one
    assert np.argwhere(red)[:, 0].mean() < np.argwhere(blue)[:, 0].mean()


def test_panels_have_expected_layout():
    img = np.full((8, 10, 3), 7, np.uint8)
    label = np.zeros((8, 10), np.int64)
    pred = np.ones((8, 10), np.int64)
    panel = eval_panel(img, label, pred, PALETTE)
    assert panel.shape == (8, 30, 3)
    np.testing.assert_array_equal(panel[0, 10], PALETTE[0])
    np.testing.assert_array_equal(panel[0, 20], PALETTE[1])
    names = ["a", "b", "c", "d"]
    out = prediction_panel(img, pred, PALETTE, names, min_height=0)
    assert out.shape[0] >= 24 and out.shape[1] > 20
    np.testing.assert_array_equal(out[0, 10 + 4], PALETTE[1])  # after the gap
    big = prediction_panel(img, pred, PALETTE, names, min_height=20)  # enlarged 3x
    assert big.shape[0] == 24
    np.testing.assert_array_equal(big[:24, :30], np.repeat(np.repeat(img, 3, 0), 3, 1))
    np.testing.assert_array_equal(big[0, 30 + 4 + 29], PALETTE[1])


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


def test_confusion_matrix_figure_writes_png(tmp_path):
    conf = np.array([[5, 1], [0, 3]])
    path = confusion_matrix_figure(conf, tmp_path / "cm.png", class_names=["a", "b"])
    img = cv2.imread(str(path))
    assert img is not None and img.shape[0] > 100
