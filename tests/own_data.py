"""Small datasets of real photographs (scikit-image's bundled samples, no download) with masks
drawn from a brightness threshold and a disc, written in each mask convention that
``python -m mit_semseg.data.prepare`` takes; shared by the data, cli and docs tests.

Every pixel belongs to one of three classes: ``wall`` (darker than the image's median),
``sky`` (brighter), ``person`` (a disc around the centre, over both); a 2-pixel ring on the
disc's edge is unlabeled, as object boundaries often are in real annotations.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

skimage_data = pytest.importorskip("skimage.data")

# the bundled photographs (colour and grayscale, landscape and square)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "camera")
CLASSES = ("wall", "sky", "person")
COLOURS = ((120, 120, 120), (6, 230, 230), (150, 5, 61))
UNLABELED = -1
UNLABELED_COLOUR = (0, 0, 0)
CLASSES_CSV = "name,r,g,b\n" + "".join(f"{n},{r},{g},{b}\n"
                                        for n, (r, g, b) in zip(CLASSES, COLOURS))


def photo(name: str, short_side: int = 64) -> np.ndarray:
    """A bundled photograph as ``(H, W, 3)`` uint8 RGB, its short side ``short_side``."""
    image = getattr(skimage_data, name)()
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    height, width = image.shape[:2]
    scale = short_side / min(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(np.ascontiguousarray(image[:, :, :3]), size, interpolation=cv2.INTER_AREA)


def classes_of(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` int64: 0 = wall, 1 = sky, 2 = person, -1 = unlabeled (see the module)."""
    gray = image.astype(np.float32).mean(axis=2)
    label = (gray > np.median(gray)).astype(np.int64)
    height, width = gray.shape
    y, x = np.mgrid[0:height, 0:width]
    distance = np.hypot(y - height / 2, x - width / 2)
    radius = 0.3 * min(height, width)
    label[distance < radius] = 2
    label[np.abs(distance - radius) < 1.0] = UNLABELED
    return label


def encode(label: np.ndarray, convention: str, colours=COLOURS) -> np.ndarray:
    """The mask of ``label`` (see :func:`classes_of`) as a file in ``convention`` holds it
    (colour masks: class ``k`` in ``colours[k]``)."""
    if convention == "index":  # ADE20K: 0 = unlabeled, 1..K
        return (label + 1).astype(np.uint8)
    if convention == "ignore255":  # VOC / Cityscapes: 0..K-1, 255 = unlabeled
        return np.where(label == UNLABELED, 255, label).astype(np.uint8)
    if convention == "binary":  # foreground = person (unlabeled ring counted as background)
        return np.where(label == 2, 255, 0).astype(np.uint8)
    if convention == "colour":
        table = np.array([*colours, UNLABELED_COLOUR], np.uint8)
        return table[label]  # -1 picks the last row
    raise ValueError(convention)


def write_image(path: Path, image: np.ndarray) -> None:
    """RGB (or one channel) to ``path`` (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    if not cv2.imwrite(str(path), array):
        raise OSError(f"cannot write {path}")


def write_photo_dataset(root: Path, convention: str, names=PHOTOS, short_side: int = 64,
                        images: str = "photos", masks: str = "masks", colours=COLOURS,
                        classes_csv: str = CLASSES_CSV) -> tuple[Path, Path]:
    """``root/photos/<name>.jpg`` and ``root/masks/<name>.png`` in ``convention`` (colour
    masks in ``colours``), plus ``root/classes.csv``; returns the two folders."""
    for name in names:
        image = photo(name, short_side)
        write_image(root / images / f"{name}.jpg", image)
        write_image(root / masks / f"{name}.png", encode(classes_of(image), convention, colours))
    (root / "classes.csv").write_text(classes_csv)
    return root / images, root / masks
