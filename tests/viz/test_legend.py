import numpy as np
import pytest

from mit_semseg.viz.legend import MIN_LEGEND_FRACTION, legend_rows, make_legend

PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)
NAMES = ["wall", "sky", "floor", "lamp"]


def _label(counts: dict[int, int], size: int = 1000) -> np.ndarray:
    """A 1 x size map with ``counts[c]`` pixels of class c, the rest unlabeled (-1)."""
    values = [c for c, n in counts.items() for _ in range(n)]
    return np.array([values + [-1] * (size - len(values))])


def test_rows_sorted_by_share_and_negligible_classes_counted_not_listed():
    label = _label({0: 600, 1: 396, 2: 4})  # floor covers 0.4%: below the threshold
    assert 0.004 < MIN_LEGEND_FRACTION
    rows, hidden = legend_rows([label], PALETTE, NAMES)
    assert rows == [("wall", (255, 0, 0)), ("sky", (0, 255, 0))]
    assert hidden == 1


def test_rows_cover_every_map_with_shares_of_the_first():
    truth = _label({0: 500, 1: 500})
    pred = _label({0: 900, 3: 100})
    rows, hidden = legend_rows([truth, pred], PALETTE, NAMES, show_fraction=True)
    # lamp appears only in the prediction; its share is given for the first map (0%)
    assert [text for text, _ in rows] == ["wall 50.0%", "sky 50.0%", "lamp 0.0%"]
    assert hidden == 0


def test_unlabeled_row_when_the_ground_truth_has_enough_ignored_pixels():
    rows, _ = legend_rows([_label({0: 900})], PALETTE, NAMES)
    assert rows[-1] == ("unlabeled", (0, 0, 0))
    rows, _ = legend_rows([_label({0: 1000})], PALETTE, NAMES)
    assert [text for text, _ in rows] == ["wall"]


def test_too_few_names_is_an_error():
    with pytest.raises(ValueError, match="3 class names for a palette of 4 colours"):
        legend_rows([_label({0: 10})], PALETTE, NAMES[:3])


def _swatch_rows(legend: np.ndarray, colour) -> np.ndarray:
    return np.flatnonzero(np.all(legend == colour, axis=-1).any(axis=1))


def test_make_legend_draws_framed_swatches_in_order_and_fits_the_text():
    rows = [("wall", (255, 0, 0)), ("sky", (0, 0, 255))]
    legend = make_legend(rows, height=200, scale=0.6)
    assert legend.shape[0] == 200
    red, blue = _swatch_rows(legend, (255, 0, 0)), _swatch_rows(legend, (0, 0, 255))
    assert len(red) > 5 and len(blue) > 5
    assert red.max() < blue.min()  # first row on top
    # the frame around the swatch is dark grey, so white and black classes stay visible
    assert (legend[red[0] - 1, 2] == 64).all()
    wide = make_legend([("a very long class name indeed", (1, 2, 3))], height=200, scale=0.6)
    assert wide.shape[1] > legend.shape[1] + 100
    assert (wide[:, -3:] == 255).all()  # the text ends before the right edge


def test_make_legend_counts_rows_that_do_not_fit():
    colours = [(10 * i, 0, 0) for i in range(1, 21)]
    rows = [(f"class {i}", c) for i, c in enumerate(colours)]
    short = make_legend(rows, height=100, scale=0.6, hidden=3)
    drawn = [c for c in colours if len(_swatch_rows(short, c))]
    assert 1 <= len(drawn) < 20
    assert drawn == colours[: len(drawn)]  # the largest classes are kept
    tall = make_legend(rows, height=2000, scale=0.6)
    assert all(len(_swatch_rows(tall, c)) for c in colours)
