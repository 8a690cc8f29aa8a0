import cv2
import numpy as np

from mit_semseg.viz.confusion import confusion_matrix_figure


def test_confusion_matrix_figure_writes_a_png_atomically(tmp_path):
    conf = np.array([[5, 1], [0, 3]])
    path = confusion_matrix_figure(conf, tmp_path / "cm.png", class_names=["a", "b"])
    img = cv2.imread(str(path))
    assert img is not None and img.shape[0] > 300
    assert [p.name for p in tmp_path.iterdir()] == ["cm.png"]


def _cells_coloured(path, percent: float) -> int:
    """Pixels of the PNG with viridis' colour for ``percent`` on a 0-100 scale."""
    from matplotlib import colormaps

    rgb = np.round(255 * np.array(colormaps["viridis"](percent / 100)[:3])).astype(int)
    image = cv2.imread(str(path))[..., ::-1].astype(int)
    return int((np.abs(image - rgb).max(axis=-1) <= 1).sum())


def test_normalised_cells_use_a_fixed_0_to_100_scale(tmp_path):
    # a 90% cell has the same colour whatever the other cells are, so pictures of runs compare
    narrow = confusion_matrix_figure(np.array([[9, 1], [1, 9]]), tmp_path / "a.png", ["x", "y"])
    wide = confusion_matrix_figure(np.array([[90, 10], [0, 100]]), tmp_path / "b.png", ["x", "y"])
    assert _cells_coloured(narrow, 90) > 2000  # two cells of 90%
    assert _cells_coloured(wide, 90) > 1000
    assert _cells_coloured(narrow, 100) < 50  # nothing stretched to the top of the scale


def test_many_classes_drop_names_and_numbers(tmp_path):
    conf = np.eye(60, dtype=np.int64) * 5 + 1
    path = confusion_matrix_figure(conf, tmp_path / "big.png", [f"c{i}" for i in range(60)])
    assert cv2.imread(str(path)) is not None
