"""Pictures: colourised label maps, validation and prediction panels with legends, the
confusion-matrix heat map and the training curves.

One module per concept: :mod:`~mit_semseg.viz.colorize` (label maps to colours),
:mod:`~mit_semseg.viz.legend`, :mod:`~mit_semseg.viz.panels` (the pictures ``eval.py`` and
``test.py`` write), :mod:`~mit_semseg.viz.confusion`, :mod:`~mit_semseg.viz.curves`, and
:mod:`~mit_semseg.viz.text` (the font).
"""

from mit_semseg.viz.colorize import class_fractions, colorEncode, colorize
from mit_semseg.viz.confusion import confusion_matrix_figure
from mit_semseg.viz.curves import plot_training_curves, training_curves_figure
from mit_semseg.viz.legend import legend_rows, make_legend
from mit_semseg.viz.panels import (
    encode_image,
    eval_panel,
    prediction_panel,
    save_image,
    side_by_side,
)

__all__ = [
    "class_fractions",
    "colorEncode",
    "colorize",
    "confusion_matrix_figure",
    "encode_image",
    "eval_panel",
    "legend_rows",
    "make_legend",
    "plot_training_curves",
    "prediction_panel",
    "save_image",
    "side_by_side",
    "training_curves_figure",
]
