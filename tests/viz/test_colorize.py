import numpy as np
import pytest

from mit_semseg.viz.colorize import class_fractions, colorEncode, colorize

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


def test_color_encode_is_still_reachable_from_utils():
    from mit_semseg import utils

    assert utils.colorEncode is colorEncode


def test_colorize_rejects_label_without_colour():
    with pytest.raises(ValueError, match="label value 4 has no colour"):
        colorize(np.array([[4]]), PALETTE)
    with pytest.raises(ValueError, match=r"palette must have shape \(N, 3\)"):
        colorize(np.array([[0]]), PALETTE[:, :2])


def test_class_fractions_sorted_ignore_excluded_and_sum_to_one():
    pred = np.array([[2, 2, 2], [0, 0, 1], [-1, -1, -1]])
    fr = class_fractions(pred, 4)
    assert [c for c, _ in fr] == [2, 0, 1]
    assert fr[0][1] == pytest.approx(0.5)  # 3 of the 6 labeled pixels
    assert sum(f for _, f in fr) == pytest.approx(1.0)
