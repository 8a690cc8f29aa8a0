"""Class tables: names, synonyms and colours of the classes a model predicts.

ADE20K's 150 classes, the classes of every released model (:mod:`mit_semseg.models.zoo`), come
from ``object150_info.csv`` (beside this file; the original's table) and the standard ADE20K
palette, :data:`ADE20K_PALETTE`: the 150 colours of the original's ``data/color150.mat``, which
ADE20K visualisations everywhere use. Row ``c`` is the colour of 0-based class ``c`` (label
value ``c + 1``). Models with more than 150 classes get further colours, generated
deterministically: each is the colour of a 16-level RGB grid farthest (in CIELAB) from black and
from every colour used before it.

A dataset's own table (``object_info.csv``, :data:`CLASS_TABLE`) has the same format, with an
optional ``Color`` column (``#rrggbb``); :func:`load_class_info` reads both, and also the short
form people write by hand, a header ``name,r,g,b`` and one class a row in label order (what
``python -m mit_semseg.data.prepare --classes`` takes). The package always writes the first
form (:func:`write_class_table`): a prepared dataset, and every training run (``DIR``), carries
one, so a run folder names its own classes.
"""

from __future__ import annotations

import csv
import functools
import io
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mit_semseg.files import atomic_write_text

__all__ = [
    "ADE20K_PALETTE",
    "CLASS_TABLE",
    "OBJECT150_CSV",
    "ade_palette",
    "class_names",
    "find_class_table",
    "load_class_info",
    "write_class_table",
]

OBJECT150_CSV = Path(__file__).resolve().parent / "object150_info.csv"
# the file name of a dataset's (``DATASET.root_dataset``) or a training run's (``DIR``) table
CLASS_TABLE = "object_info.csv"
# the hand-written form: one class a row, in label order
_SHORT_COLUMNS = ("name", "r", "g", "b")
_GRID_LEVELS = 16
_HEX_COLOUR = re.compile(r"#([0-9a-fA-F]{6})")

# The rows of the original's data/color150.mat (RGB, row c = class c: wall, building, sky, ...).
# Data, transcribed from mmsegmentation 1.2.2, mmseg/datasets/ade.py
# (ADE20KDataset.METAINFO["palette"]), which reproduces color150.mat; the same table appears in
# many ADE20K visualisers. Two classes share a colour in the original (road and skyscraper,
# rows 6 and 48: (140, 140, 140)); it is kept, so pictures match the original's.
ADE20K_PALETTE = np.array([
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3),  # 0-4
    (120, 120, 80), (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7),  # 5-9
    (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70), (8, 255, 51),  # 10-14
    (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3),  # 15-19
    (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71),  # 20-24
    (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),  # 25-29
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10),  # 30-34
    (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7),  # 35-39
    (255, 122, 8), (0, 255, 20), (255, 8, 41), (255, 5, 153), (6, 51, 255),  # 40-44
    (235, 12, 255), (160, 150, 20), (0, 163, 255), (140, 140, 140), (250, 10, 15),  # 45-49
    (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0),  # 50-54
    (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),  # 55-59
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112),  # 60-64
    (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0),  # 65-69
    (0, 143, 255), (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173),  # 70-74
    (10, 0, 255), (173, 255, 0), (0, 255, 153), (255, 92, 0), (255, 0, 255),  # 75-79
    (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20), (255, 184, 184),  # 80-84
    (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),  # 85-89
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255),  # 90-94
    (0, 122, 255), (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0),  # 95-99
    (143, 255, 0), (82, 0, 255), (163, 255, 0), (255, 235, 0), (8, 184, 170),  # 100-104
    (133, 0, 255), (0, 255, 92), (184, 0, 255), (255, 0, 31), (0, 184, 255),  # 105-109
    (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255), (112, 224, 255),  # 110-114
    (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),  # 115-119
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235),  # 120-124
    (245, 0, 255), (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0),  # 125-129
    (0, 204, 255), (20, 0, 255), (255, 255, 0), (0, 153, 255), (0, 41, 255),  # 130-134
    (0, 255, 204), (41, 0, 255), (41, 255, 0), (173, 0, 255), (0, 245, 255),  # 135-139
    (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255), (184, 255, 0),  # 140-144
    (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),  # 145-149
], dtype=np.uint8)
ADE20K_PALETTE.setflags(write=False)


def _lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (L 0..100, signed a/b) of uint8 RGB rows."""
    lab = cv2.cvtColor(np.asarray(rgb, np.uint8)[None], cv2.COLOR_RGB2LAB)[0].astype(np.float32)
    lab[:, 0] *= 100.0 / 255.0  # 8-bit L is scaled to 0..255; bring it back to 0..100
    lab[:, 1:] -= 128.0
    return lab


@functools.lru_cache(maxsize=8)
def _extra_colours(count: int) -> np.ndarray:
    """``count`` colours far from black, from ADE20K_PALETTE and from each other."""
    levels = np.linspace(0, 255, _GRID_LEVELS).round().astype(np.uint8)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    if count > len(grid) - len(ADE20K_PALETTE):
        raise ValueError(f"ade_palette supports at most {len(grid)} classes, "
                         f"got {len(ADE20K_PALETTE) + count}")
    lab = _lab(grid)
    used = _lab(np.concatenate([np.zeros((1, 3), np.uint8), ADE20K_PALETTE]))
    nearest = np.linalg.norm(lab[:, None] - used[None], axis=2).min(axis=1)
    chosen = []
    for _ in range(count):
        pick = int(np.argmax(nearest))  # first maximum: ties resolve deterministically
        chosen.append(pick)
        nearest = np.minimum(nearest, np.linalg.norm(lab - lab[pick], axis=1))
    colours = grid[chosen]
    colours.setflags(write=False)
    return colours


def ade_palette(num_class: int = 150) -> np.ndarray:
    """``(num_class, 3)`` uint8 RGB colours: the standard ADE20K ones, then generated ones.

    The first ``min(num_class, 150)`` rows are :data:`ADE20K_PALETTE`, so a class keeps its
    colour whatever ``num_class`` is.
    """
    if num_class < 0:
        raise ValueError(f"num_class must be >= 0, got {num_class}")
    num_class = int(num_class)
    extra = num_class - len(ADE20K_PALETTE)
    if extra <= 0:
        return ADE20K_PALETTE[:num_class].copy()
    return np.concatenate([ADE20K_PALETTE, _extra_colours(extra)])


def _parse_colour(text: str | None, where: str) -> tuple[int, int, int]:
    match = _HEX_COLOUR.fullmatch((text or "").strip())
    if not match:
        raise ValueError(f"{where}: Color must look like #rrggbb, got {text!r}")
    value = int(match.group(1), 16)
    return (value >> 16) & 255, (value >> 8) & 255, value & 255


def _short_form_rows(path: Path, rows: list[dict]) -> list[tuple[int, str, tuple | None]]:
    """``(Idx, Name, colour)`` per row of a ``name,r,g,b`` table (Idx = row number)."""
    table = []
    for line, row in enumerate(rows, start=2):
        colour = []
        for channel in "rgb":
            text = (row.get(channel) or "").strip()
            if not text.isdigit() or int(text) > 255:
                raise ValueError(f"{path}:{line}: {channel} must be an integer 0..255, "
                                 f"got {row.get(channel)!r}")
            colour.append(int(text))
        table.append((line - 1, row.get("name") or "", tuple(colour)))
    return table


def load_class_info(csv_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Reads a class table such as ``object150_info.csv`` or a dataset's ``object_info.csv``.

    The file needs the columns ``Idx`` (label value, 1..N, consecutive) and ``Name``
    (``;``-separated synonyms, the first one is the display name); an optional ``Color`` column
    gives each class's colour as ``#rrggbb``; other columns are kept. The hand-written form
    with exactly the header ``name,r,g,b`` (any case) is read too: row ``k`` is label value
    ``k``, ``name`` may hold synonyms the same way, ``r,g,b`` are 0..255.

    Returns:
        ``{'idx': [1..N], 'names': [first synonym per class], 'synonyms': [[...], ...],
        'colors': (N, 3) uint8 RGB array or None without a Color column,
        'rows': [dict per row]}``, all in ``Idx`` order.

    Raises:
        FileNotFoundError: missing file.
        ValueError: missing columns, a bad or non-consecutive ``Idx``, an empty name, a
            malformed colour.
    """
    path = Path(csv_path) if csv_path is not None else OBJECT150_CSV
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, skipinitialspace=True)
            columns = [c.strip() for c in reader.fieldnames or []]
            reader.fieldnames = columns
            rows = list(reader)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: class table not found") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    short_form = tuple(c.lower() for c in columns) == _SHORT_COLUMNS
    if short_form:
        rows = [{k.lower(): v for k, v in row.items()} for row in rows]
        entries = _short_form_rows(path, rows)
    else:
        missing = [c for c in ("Idx", "Name") if c not in columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (found {columns}); "
                             "a class table has the columns Idx,Name[,Color] or name,r,g,b")
        entries = []
        for line, row in enumerate(rows, start=2):
            try:
                idx = int(row["Idx"])
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{line}: Idx must be an integer, got {row['Idx']!r}"
                                 ) from None
            colour = (_parse_colour(row["Color"], f"{path}:{line}") if "Color" in columns
                      else None)
            entries.append((idx, row["Name"] or "", colour))
    table = []
    for line, ((idx, name, colour), row) in enumerate(zip(entries, rows), start=2):
        synonyms = [s.strip() for s in name.split(";") if s.strip()]
        if not synonyms:
            raise ValueError(f"{path}:{line}: empty name")
        table.append((idx, synonyms, row, colour))
    table.sort(key=lambda t: t[0])
    idx = [t[0] for t in table]
    if idx != list(range(1, len(idx) + 1)):
        raise ValueError(f"{path}: Idx must run 1..N without gaps, got {idx[:5]}...")
    has_colours = short_form or "Color" in columns
    return {
        "idx": idx,
        "names": [t[1][0] for t in table],
        "synonyms": [t[1] for t in table],
        "colors": np.array([t[3] for t in table], np.uint8).reshape(-1, 3) if has_colours else None,
        "rows": [t[2] for t in table],
    }


def write_class_table(path: str | os.PathLike, synonyms: Sequence[Sequence[str] | str],
                      colours: np.ndarray) -> None:
    """Writes a class table (``Idx,Name,Color``) atomically; :func:`load_class_info` reads it.

    Args:
        path: the file, usually ``<folder>/`` :data:`CLASS_TABLE`.
        synonyms: per class, its names (display name first) or one name.
        colours: ``(N, 3)`` uint8 RGB, row ``k`` = class ``k``.

    Raises:
        ValueError: the counts differ, or a name is empty or holds ``;`` inside a synonym.
    """
    colours = np.asarray(colours)
    if colours.shape != (len(synonyms), 3):
        raise ValueError(f"{len(synonyms)} classes but colours of shape {colours.shape}")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("Idx", "Name", "Color"))
    for idx, (names, rgb) in enumerate(zip(synonyms, colours), start=1):
        names = [names] if isinstance(names, str) else list(names)
        if not names or any(not n.strip() or ";" in n for n in names):
            raise ValueError(f"class {idx}: names must be non-empty and free of ';', got {names}")
        writer.writerow((idx, ";".join(n.strip() for n in names),
                         "#" + "".join(f"{int(v):02x}" for v in rgb)))
    atomic_write_text(path, buffer.getvalue())


def find_class_table(num_class: int, folders: Sequence[str | os.PathLike | None]) -> Path | None:
    """The table that names ``num_class`` classes: the first ``<folder>/object_info.csv`` that
    exists (``None`` folders are skipped), else the packaged ADE20K table when ``num_class``
    is 150, else None."""
    for folder in folders:
        if folder and (Path(folder) / CLASS_TABLE).is_file():
            return Path(folder) / CLASS_TABLE
    return OBJECT150_CSV if num_class == len(ADE20K_PALETTE) else None


def class_names(csv_path: str | os.PathLike | None = None) -> list[str]:
    """Display names, 0-based (entry ``c`` names label value ``c + 1``)."""
    return load_class_info(csv_path)["names"]
