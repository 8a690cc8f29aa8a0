"""Training curves (loss, pixel accuracy, learning rates) as a PNG, drawn off-screen."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import Any

from .files import atomic_write

__all__ = ["plot_training_curves"]


def plot_training_curves(history: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Draw ``history['train']`` (see :func:`mit_semseg.engine.trainer.new_history`) to ``path``.

    Three panels share the iteration axis: loss, pixel accuracy (%) and both learning rates.
    The file is written atomically; nothing is drawn on screen.

    Raises:
        ValueError: the history has no recorded points.
    """
    # a bare Figure renders with Agg and touches neither pyplot's global state nor a GUI
    from matplotlib.figure import Figure

    train = history["train"]
    if not train.get("loss"):
        raise ValueError("the training history is empty: nothing to plot")
    x = train.get("iteration") or train["epoch"]
    xlabel = "iteration" if train.get("iteration") else "epoch"
    fig = Figure(figsize=(6, 8), dpi=100)
    ax_loss, ax_acc, ax_lr = fig.subplots(3, 1, sharex=True)
    ax_loss.plot(x, train["loss"], color="tab:red")
    ax_loss.set_ylabel("loss")
    ax_acc.plot(x, [100.0 * a for a in train["acc"]], color="tab:blue")
    ax_acc.set_ylabel("pixel accuracy (%)")
    for key, colour in (("lr_encoder", "tab:green"), ("lr_decoder", "tab:orange")):
        if train.get(key):
            ax_lr.plot(x, train[key], color=colour, label=key)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel(xlabel)
    if ax_lr.lines:
        ax_lr.legend()
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
