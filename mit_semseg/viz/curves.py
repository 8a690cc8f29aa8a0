"""Training curves (loss, pixel accuracy, learning rates) as a PNG, drawn off-screen."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mit_semseg.files import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["epoch_boundaries", "plot_training_curves", "training_curves_figure"]

# Equal encoder and decoder learning rates (the usual case) draw the same curve: the encoder's
# is wide and light, the decoder's dashed on top of it, so that both stay visible.
_LR_STYLES = {
    "lr_encoder": {"color": "tab:green", "linestyle": "-", "linewidth": 4, "alpha": 0.5,
                   "label": "encoder lr"},
    "lr_decoder": {"color": "tab:purple", "linestyle": "--", "linewidth": 1.5,
                   "label": "decoder lr"},
}


def epoch_boundaries(
    iterations: Sequence[float], epochs: Sequence[float]
) -> list[tuple[int, float]]:
    """Where each new epoch starts on the iteration axis.

    Args:
        iterations: iteration of each record, increasing.
        epochs: fractional epoch of each record (``epoch + i / epoch_iters``, 0-based).

    Returns:
        ``(k, iteration)`` for every whole epoch ``k >= 1`` crossed between two records, the
        iteration interpolated linearly between them.
    """
    boundaries = []
    for j in range(1, min(len(iterations), len(epochs))):
        e0, e1 = float(epochs[j - 1]), float(epochs[j])
        for k in range(math.floor(e0) + 1, math.floor(e1) + 1):
            it0, it1 = float(iterations[j - 1]), float(iterations[j])
            boundaries.append((k, it0 + (k - e0) * (it1 - it0) / (e1 - e0)))
    return boundaries


def training_curves_figure(history: Mapping[str, Any], title: str) -> Figure:
    """The figure :func:`plot_training_curves` saves (see there), titled ``training curves:
    <title>``."""
    # a bare Figure renders with Agg and touches neither pyplot's global state nor a GUI
    from matplotlib.figure import Figure

    train = history["train"]
    if not train.get("loss"):
        raise ValueError("the training history is empty: nothing to plot")
    by_iteration = bool(train.get("iteration"))
    x = train["iteration"] if by_iteration else train["epoch"]
    fig = Figure(figsize=(7, 8), dpi=100)
    ax_loss, ax_acc, ax_lr = fig.subplots(3, 1, sharex=True)
    ax_loss.plot(x, train["loss"], color="tab:red")
    ax_loss.set_ylabel("loss")
    ax_acc.plot(x, [100.0 * a for a in train["acc"]], color="tab:blue")
    ax_acc.set_ylabel("pixel accuracy (%)")
    for key, style in _LR_STYLES.items():
        if train.get(key):
            ax_lr.plot(x, train[key], **style)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("iteration" if by_iteration else "epoch")
    if ax_lr.lines:
        ax_lr.legend(loc="upper right")
    if by_iteration and train.get("epoch"):
        boundaries = epoch_boundaries(train["iteration"], train["epoch"])
    else:  # the axis is in epochs already
        boundaries = [(k, float(k)) for k in range(1, math.ceil(max(x)))]
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(alpha=0.3)
        for _, position in boundaries:
            ax.axvline(position, color="0.4", linestyle=":", linewidth=1)
    # "epoch N" over the loss panel, at the start of each epoch
    starts = [(1, float(x[0]))] + [(k + 1, position) for k, position in boundaries]
    for epoch, position in starts:
        ax_loss.annotate(f"epoch {epoch}", (position, 1.0), xycoords=("data", "axes fraction"),
                         xytext=(3, -3), textcoords="offset points", ha="left", va="top",
                         fontsize=8, color="0.3")
    fig.suptitle(f"training curves: {title}")
    fig.tight_layout()
    return fig


def plot_training_curves(
    history: Mapping[str, Any], path: str | os.PathLike, title: str | None = None
) -> None:
    """Draws ``history['train']`` (see :func:`mit_semseg.engine.trainer.new_history`) to ``path``.

    Three panels share the iteration axis: loss, pixel accuracy (%) and both learning rates
    (encoder wide and light, decoder dashed on top, so both show when they are equal). Dotted
    vertical lines mark where each epoch starts. The file is written atomically; nothing is
    drawn on screen.

    Args:
        history: the training history.
        path: output PNG.
        title: names the run at the top; ``None`` = the name of ``path``'s folder (the run's
            ``DIR``).

    Raises:
        ValueError: the history has no recorded points.
    """
    if title is None:
        title = Path(path).resolve().parent.name
    fig = training_curves_figure(history, title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
