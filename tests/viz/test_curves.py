"""mit_semseg.viz.curves: the training-curve PNG."""

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from mit_semseg.engine.trainer import new_history
from mit_semseg.viz.curves import epoch_boundaries, plot_training_curves, training_curves_figure

EPOCH_ITERS = 40


def _history(num_epoch=3, lr_decoder_factor=1.0):
    """What train_one_epoch records every 10 iterations and at the end of each epoch."""
    history = new_history()
    record = history["train"]
    for epoch in range(num_epoch):
        for i in [*range(0, EPOCH_ITERS, 10), EPOCH_ITERS - 1]:
            it = epoch * EPOCH_ITERS + i
            lr = 0.02 * (1 - it / (num_epoch * EPOCH_ITERS)) ** 0.9
            record["epoch"].append(epoch + i / EPOCH_ITERS)
            record["iteration"].append(it)
            record["loss"].append(2.0 / (it + 1))
            record["acc"].append(it / 150)
            record["lr_encoder"].append(lr)
            record["lr_decoder"].append(lr * lr_decoder_factor)
    return history


def test_epoch_boundaries_fall_on_whole_epochs():
    train = _history()["train"]
    assert epoch_boundaries(train["iteration"], train["epoch"]) == [(1, 40.0), (2, 80.0)]
    # interpolated between records when no record falls on the boundary
    assert epoch_boundaries([0, 10], [0.5, 1.5]) == [(1, 5.0)]
    assert epoch_boundaries([0, 1], [0.1, 0.2]) == []


def test_figure_marks_epochs_titles_the_run_and_styles_the_lrs_apart():
    fig = training_curves_figure(_history(), "my-run")
    assert fig._suptitle.get_text() == "training curves: my-run"
    ax_loss, ax_acc, ax_lr = fig.axes
    for ax in (ax_loss, ax_acc, ax_lr):
        dotted = [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == ":"]
        assert dotted == [40.0, 80.0]
    labels = [t.get_text() for t in ax_loss.texts]
    assert labels == ["epoch 1", "epoch 2", "epoch 3"]
    lrs = {line.get_label(): line for line in ax_lr.lines if line.get_linestyle() != ":"}
    encoder, decoder = lrs["encoder lr"], lrs["decoder lr"]
    np.testing.assert_allclose(encoder.get_ydata(), decoder.get_ydata())  # equal lrs
    # yet drawn differently: a wide solid line under a thin dashed one
    assert encoder.get_linestyle() == "-" and decoder.get_linestyle() == "--"
    assert encoder.get_linewidth() > 2 * decoder.get_linewidth()
    assert encoder.get_zorder() <= decoder.get_zorder()


def _pixels_near(image: np.ndarray, rgb, tol=0.12) -> int:
    return int((np.abs(image[..., :3] - np.asarray(rgb)).max(axis=-1) < tol).sum())


def test_both_lr_curves_are_visible_in_the_png_when_equal(tmp_path):
    path = tmp_path / "run-7" / "training_curves.png"
    path.parent.mkdir()
    plot_training_curves(_history(), path)
    image = imread(path)
    assert image.shape[:2] == (800, 700)
    # the light green of the encoder line (alpha 0.5 on white) and the decoder's purple both show
    encoder_on_white = 0.5 * np.array(to_rgb("tab:green")) + 0.5
    assert _pixels_near(image, encoder_on_white) > 200
    assert _pixels_near(image, to_rgb("tab:purple")) > 100
    assert [p.name for p in path.parent.iterdir()] == ["training_curves.png"]


def test_default_title_is_the_run_folder(tmp_path, monkeypatch):
    import mit_semseg.viz.curves as curves

    titles = []
    real = curves.training_curves_figure
    monkeypatch.setattr(curves, "training_curves_figure",
                        lambda history, title: titles.append(title) or real(history, title))
    (tmp_path / "ade20k-resnet50").mkdir()
    plot_training_curves(_history(1), tmp_path / "ade20k-resnet50" / "curves.png")
    plot_training_curves(_history(1), tmp_path / "x.png", title="explicit")
    assert titles == ["ade20k-resnet50", "explicit"]


def test_plot_rejects_empty_history(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plot_training_curves(new_history(), tmp_path / "x.png")
