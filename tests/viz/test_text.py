import numpy as np

from mit_semseg.viz.text import put_text, text_scale, text_size


def test_scale_grows_with_the_picture_within_bounds():
    assert text_scale(100) == text_scale(200) == 0.55  # never unreadably small
    assert text_scale(300) < text_scale(600) < text_scale(900)
    assert text_scale(10_000) == 1.6


def test_put_text_stays_inside_the_measured_box():
    scale = 0.7
    width, height = text_size("ground truth", scale)
    canvas = np.full((height + 20, width + 20, 3), 255, np.uint8)
    put_text(canvas, "ground truth", 10, 10, scale)
    ink = np.argwhere((canvas < 200).any(axis=-1))
    assert len(ink) > 50
    assert ink[:, 0].min() >= 10 and ink[:, 0].max() < 10 + height + 1
    assert ink[:, 1].min() >= 10 and ink[:, 1].max() < 10 + width + 1
