"""The confusion matrix of an evaluation as a heat map (``confusion_matrix.png``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mit_semseg.files import atomic_write

__all__ = ["confusion_matrix_figure"]

# Up to this many classes each cell also shows its value; beyond, the numbers would not fit.
_MAX_ANNOTATED = 20
# Up to this many classes the axes carry the class names.
_MAX_NAMED = 40


def confusion_matrix_figure(
    conf: np.ndarray,
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    normalize: bool = True,
) -> Path:
    """Saves a heat map of a confusion matrix (rows = ground truth, columns = prediction).

    Args:
        conf: ``(C, C)`` counts.
        path: output PNG path (written atomically).
        class_names: tick labels; drawn only when there are at most 40 classes.
        normalize: show each row as percentages of its ground-truth pixels.

    Returns:
        the path written.
    """
    # Figure without pyplot: no global backend state, safe in worker processes
    from matplotlib.figure import Figure

    conf = np.asarray(conf, dtype=np.float64)
    num_class = conf.shape[0]
    shown = 100.0 * conf / np.maximum(conf.sum(axis=1, keepdims=True), 1) if normalize else conf
    size = min(4 + 0.3 * num_class, 30)
    fig = Figure(figsize=(size + 1, size), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    # a fixed 0-100 scale when normalised, so that colours compare between runs
    im = ax.imshow(shown, cmap="viridis", interpolation="nearest",
                   vmin=0 if normalize else None, vmax=100 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04,
                 label="% of the ground-truth class" if normalize else "pixels")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("ground-truth class")
    ax.set_title("confusion matrix" + (" (each row sums to 100%)" if normalize else ""))
    if class_names is not None and num_class <= _MAX_NAMED:
        ticks = np.arange(num_class)
        ax.set_xticks(ticks, labels=list(class_names), rotation=45, ha="right", fontsize=8)
        ax.set_yticks(ticks, labels=list(class_names), fontsize=8)
    if num_class <= _MAX_ANNOTATED:
        low, high = im.get_clim()
        middle = (low + high) / 2
        for (row, col), value in np.ndenumerate(shown):
            text = f"{value:.0f}" if normalize else f"{value:.3g}"
            # dark text on the bright end of viridis, white on the dark end
            ax.text(col, row, text, ha="center", va="center", fontsize=8,
                    color="black" if value > middle else "white")
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    return path
