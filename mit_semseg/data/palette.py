"""The classes of a dataset as pictures and reports show them: names and colours.

A dataset names its classes in ``<root_dataset>/object_info.csv`` (see
:func:`mit_semseg.models.classes.load_class_info`; the synthetic dataset and prepared custom
datasets write one), optionally with a ``Color`` column, so its "yellow disc" is drawn yellow;
ADE20K's 150 classes have the packaged table and palette.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from mit_semseg.models.classes import (
    OBJECT150_CSV,
    ade_palette,
    class_names,
    load_class_info,
)

__all__ = ["dataset_palette", "resolve_class_names"]

logger = logging.getLogger(__name__)


def dataset_palette(num_class: int, root_dataset: str | os.PathLike | None = None
                    ) -> np.ndarray:
    """Colours for a dataset's pictures: ``(num_class, 3)`` uint8 RGB, row ``c`` = class ``c``.

    The ``Color`` column of ``<root_dataset>/object_info.csv`` when the file has one (rows
    beyond the table take :func:`ade_palette`'s colours), else :func:`ade_palette`.
    """
    palette = ade_palette(num_class)
    table = Path(root_dataset) / "object_info.csv" if root_dataset else None
    if table is not None and table.is_file():
        colours = load_class_info(table)["colors"]
        if colours is not None:
            rows = min(num_class, len(colours))
            palette[:rows] = colours[:rows]
    return palette


def resolve_class_names(num_class: int, root_dataset: str | Path | None = None) -> list[str]:
    """Display names of the classes, by the first rule that applies.

    1. ``<root_dataset>/object_info.csv`` (the synthetic dataset and custom datasets);
    2. the packaged ADE20K table when ``num_class == 150``;
    3. ``class_<i>``.

    A table with fewer rows than ``num_class`` is completed with ``class_<i>`` names.
    """
    candidates = []
    if root_dataset:
        candidates.append(Path(root_dataset) / "object_info.csv")
    if num_class == 150:
        candidates.append(OBJECT150_CSV)
    names: list[str] = []
    for path in candidates:
        if path.is_file():
            names = [str(n) for n in class_names(path)]
            logger.info("class names from %s", path)
            break
    names = names[:num_class]
    return names + [f"class_{i}" for i in range(len(names), num_class)]
