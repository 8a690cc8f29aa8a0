"""Class colours and class-name tables.

:func:`ade_palette` builds a deterministic set of visually distinct colours by greedy
farthest-point selection in CIELAB space: starting from black (reserved, so no class looks like
"unlabeled"), each new colour is the candidate of a 16-level RGB grid that is farthest from all
colours chosen so far. Row ``c`` is the colour of 0-based class ``c`` (label value ``c + 1``),
the layout of the original ``color150.mat`` (whose values are not reused).
"""

from __future__ import annotations

import csv
import functools
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = ["OBJECT150_CSV", "ade_palette", "class_names", "load_class_info"]

OBJECT150_CSV = Path(__file__).resolve().parent / "object150_info.csv"
_GRID_LEVELS = 16


@functools.lru_cache(maxsize=8)
def _palette(num_class: int) -> np.ndarray:
    levels = np.linspace(0, 255, _GRID_LEVELS).round().astype(np.uint8)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    if num_class >= len(grid):
        raise ValueError(f"ade_palette supports fewer than {len(grid)} classes, got {num_class}")
    lab = cv2.cvtColor(grid[None], cv2.COLOR_RGB2LAB)[0].astype(np.float32)
    lab[:, 0] *= 100.0 / 255.0  # 8-bit L is scaled to 0..255; bring it back to 0..100
    lab[:, 1:] -= 128.0
    nearest = np.linalg.norm(lab - lab[0], axis=1)  # distance to black (grid[0])
    chosen = []
    for _ in range(num_class):
        pick = int(np.argmax(nearest))  # first maximum: ties resolve deterministically
        chosen.append(pick)
        nearest = np.minimum(nearest, np.linalg.norm(lab - lab[pick], axis=1))
    palette = grid[chosen]
    palette.setflags(write=False)
    return palette


def ade_palette(num_class: int = 150) -> np.ndarray:
    """``(num_class, 3)`` uint8 RGB colours, deterministic and mutually distinct."""
    if num_class < 0:
        raise ValueError(f"num_class must be >= 0, got {num_class}")
    return _palette(int(num_class)).copy()


def load_class_info(csv_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Reads a class table such as ``object150_info.csv`` or a dataset's ``object_info.csv``.

    The file needs the columns ``Idx`` (label value, 1..N, consecutive) and ``Name``
    (``;``-separated synonyms, the first one is the display name); other columns are kept.

    Returns:
        ``{'idx': [1..N], 'names': [first synonym per class], 'synonyms': [[...], ...],
        'rows': [dict per row]}``, all in ``Idx`` order.

    Raises:
        FileNotFoundError: missing file.
        ValueError: missing columns, a bad or non-consecutive ``Idx``, an empty name.
    """
    path = Path(csv_path) if csv_path is not None else OBJECT150_CSV
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            rows = list(reader)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: class table not found") from None
    missing = [c for c in ("Idx", "Name") if c not in columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (found {columns})")
    table = []
    for line, row in enumerate(rows, start=2):
        try:
            idx = int(row["Idx"])
        except (TypeError, ValueError):
            raise ValueError(f"{path}:{line}: Idx must be an integer, got {row['Idx']!r}") from None
        synonyms = [s.strip() for s in (row["Name"] or "").split(";") if s.strip()]
        if not synonyms:
            raise ValueError(f"{path}:{line}: empty Name")
        table.append((idx, synonyms, row))
    table.sort(key=lambda t: t[0])
    idx = [t[0] for t in table]
    if idx != list(range(1, len(idx) + 1)):
        raise ValueError(f"{path}: Idx must run 1..N without gaps, got {idx[:5]}...")
    return {
        "idx": idx,
        "names": [t[1][0] for t in table],
        "synonyms": [t[1] for t in table],
        "rows": [t[2] for t in table],
    }


def class_names(csv_path: str | os.PathLike | None = None) -> list[str]:
    """Display names, 0-based (entry ``c`` names label value ``c + 1``)."""
    return load_class_info(csv_path)["names"]
