"""The classes of a dataset or a trained model as pictures and reports show them: names,
synonyms and colours.

One table format names classes everywhere (:func:`mit_semseg.models.classes.load_class_info`):
``object_info.csv``, with the columns ``Idx,Name[,Color]`` (or the hand-written
``name,r,g,b``). A dataset keeps it in ``DATASET.root_dataset`` (the synthetic dataset and
``python -m mit_semseg.data.prepare`` write one) and ``train.py`` copies it into ``DIR``, so a
run folder carries the names and colours of the classes its model predicts. ADE20K's 150
classes have the packaged table and palette.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from mit_semseg.models.classes import ade_palette, find_class_table, load_class_info

__all__ = ["ClassTable", "dataset_classes", "dataset_palette", "resolve_class_names"]

logger = logging.getLogger(__name__)

# a folder that may hold a class table (a type alias: evaluated at run time, so no ``|``)
Folder = Union[str, os.PathLike, None]


@dataclass(frozen=True)
class ClassTable:
    """The classes of a dataset or model, row ``k`` = class ``k`` (label value ``k + 1``).

    Attributes:
        names: display names.
        synonyms: every name of each class, display name first.
        palette: ``(num_class, 3)`` uint8 RGB colours.
        source: the table file they come from, or None (generated names and colours).
    """

    names: list[str]
    synonyms: list[list[str]]
    palette: np.ndarray
    source: Path | None


def dataset_classes(num_class: int, root_dataset: Folder = None, run_dir: Folder = None
                    ) -> ClassTable:
    """The classes, from the first table that exists:

    1. ``<run_dir>/object_info.csv``: the classes a training run was trained on;
    2. ``<root_dataset>/object_info.csv``: the dataset's (synthetic, prepared, custom);
    3. the packaged ADE20K table when ``num_class == 150``.

    A table with fewer rows than ``num_class`` is completed with ``class_<i>`` names; colours
    come from its ``Color`` column, else (and for rows beyond it) from
    :func:`~mit_semseg.models.classes.ade_palette`.
    """
    path = find_class_table(num_class, (run_dir, root_dataset))
    palette = ade_palette(num_class)
    synonyms: list[list[str]] = []
    if path is not None:
        info = load_class_info(path)
        synonyms = [list(s) for s in info["synonyms"][:num_class]]
        if info["colors"] is not None:
            rows = min(num_class, len(info["colors"]))
            palette[:rows] = info["colors"][:rows]
        logger.info("class names from %s", path)
    synonyms += [[f"class_{i}"] for i in range(len(synonyms), num_class)]
    return ClassTable([s[0] for s in synonyms], synonyms, palette, path)


def dataset_palette(num_class: int, root_dataset: Folder = None, run_dir: Folder = None
                    ) -> np.ndarray:
    """Colours for pictures: ``(num_class, 3)`` uint8 RGB (see :func:`dataset_classes`)."""
    return dataset_classes(num_class, root_dataset, run_dir).palette


def resolve_class_names(num_class: int, root_dataset: Folder = None, run_dir: Folder = None
                        ) -> list[str]:
    """Display names of the classes (see :func:`dataset_classes`); ``class_<i>`` without a
    table."""
    return dataset_classes(num_class, root_dataset, run_dir).names
