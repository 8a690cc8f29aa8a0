"""mit_semseg.plotting: the training-curve PNG."""

import numpy as np
import pytest
from matplotlib.image import imread

from mit_semseg.engine.trainer import new_history
from mit_semseg.plotting import plot_training_curves


def test_plot_writes_a_png(tmp_path):
    history = new_history()
    for it in range(0, 50, 10):
        record = history["train"]
        record["iteration"].append(it)
        record["epoch"].append(it / 50)
        record["loss"].append(2.0 / (it + 1))
        record["acc"].append(it / 60)
        record["lr_encoder"].append(0.02 * (1 - it / 50) ** 0.9)
        record["lr_decoder"].append(0.01 * (1 - it / 50) ** 0.9)
    path = tmp_path / "training_curves.png"
    plot_training_curves(history, path)
    image = imread(path)
    assert image.shape[:2] == (800, 600)
    assert np.unique(image.reshape(-1, image.shape[-1]), axis=0).shape[0] > 10  # not blank
    assert [p.name for p in tmp_path.iterdir()] == ["training_curves.png"]


def test_plot_rejects_empty_history(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plot_training_curves(new_history(), tmp_path / "x.png")
