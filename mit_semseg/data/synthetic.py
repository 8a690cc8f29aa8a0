"""A small synthetic dataset in ADE20K format, so training, evaluation and inference run with
nothing downloaded.

Scenes are a textured background with a few textured shapes on top. Every class has its own
colour family, texture and shape, so a small network learns it quickly from random
initialisation; shapes carry a thin dark outline labelled 0 (unlabeled), like the object
boundaries of real annotations. Image sides vary independently (both orientations occur).

Layout written under ``out_dir`` (paths in the lists are relative to it, so use it as
``DATASET.root_dataset``)::

    images/{training,validation}/*.jpg     annotations/{training,validation}/*.png
    training.odgt  validation.odgt  object_info.csv (Idx,Name,Color: each class's base colour)

The output is a pure function of the arguments: the same seed gives byte-identical files.

Command line::

    python -m mit_semseg.data.synthetic --out DIR --num-train 300 --num-val 40 --seed 0
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mit_semseg.data.odgt import write_odgt
from mit_semseg.files import atomic_write_bytes, atomic_write_text

__all__ = ["CLASSES", "SYNTHETIC_NUM_CLASS", "generate", "render_scene"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyntheticClass:
    """One class: display name, base RGB colour, texture and shape."""

    name: str
    rgb: tuple[int, int, int]
    texture: str  # "noise" | "hstripes" | "vstripes" | "dots" | "checker" | "diagonal"
    shape: str  # "fill" (background) | "disc" | "box" | "triangle" | "ellipse"


# Label value = position + 1 (0 is unlabeled). Colours are far apart in hue so that colour
# alone separates the classes; textures and shapes are extra cues. Each colour is the one its
# name says (tests/data/test_synthetic.py checks the hue), and pictures use it too.
CLASSES: tuple[SyntheticClass, ...] = (
    SyntheticClass("background", (128, 128, 120), "noise", "fill"),
    SyntheticClass("red disc", (205, 35, 35), "noise", "disc"),
    SyntheticClass("green box", (40, 170, 50), "hstripes", "box"),
    SyntheticClass("blue triangle", (35, 60, 210), "dots", "triangle"),
    SyntheticClass("yellow disc", (230, 210, 30), "vstripes", "disc"),
    SyntheticClass("magenta box", (200, 40, 200), "checker", "box"),
    SyntheticClass("cyan triangle", (30, 200, 215), "diagonal", "triangle"),
    SyntheticClass("orange ellipse", (245, 130, 20), "noise", "ellipse"),
)
SYNTHETIC_NUM_CLASS = len(CLASSES)

_SPLITS = (("training", "train"), ("validation", "val"))
_JPEG_QUALITY = 95


def _texture(kind: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Brightness modulation in about [0.75, 1.25], ``(H, W, 1)`` float32."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    period = float(rng.integers(6, 11))
    phase = float(rng.uniform(0, period))
    if kind == "hstripes":
        pattern = np.sign(np.sin(2 * np.pi * (y + phase) / period))
    elif kind == "vstripes":
        pattern = np.sign(np.sin(2 * np.pi * (x + phase) / period))
    elif kind == "diagonal":
        pattern = np.sign(np.sin(2 * np.pi * (x + y + phase) / period))
    elif kind == "checker":
        cells = (np.floor((x + phase) / period) + np.floor((y + phase) / period)) % 2
        pattern = cells * 2 - 1
    elif kind == "dots":
        dy = (y + phase) % period - period / 2
        dx = (x + phase) % period - period / 2
        pattern = np.where(dx * dx + dy * dy < (period / 4) ** 2, -1.0, 0.4)
    else:
        pattern = np.zeros((height, width), np.float32)
    noise = rng.normal(0.0, 0.05, size=(height, width)).astype(np.float32)
    return (1.0 + 0.18 * pattern + noise)[:, :, None].astype(np.float32)


def _shape_mask(shape: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Filled mask of one randomly placed shape, plus its 1-pixel outline (value 2)."""
    mask = np.zeros((height, width), np.uint8)
    size = rng.uniform(0.12, 0.32) * min(height, width)
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    if shape == "disc":
        args = ((int(cx), int(cy)), max(2, int(size)))
        cv2.circle(mask, *args, 1, thickness=-1)
        cv2.circle(mask, *args, 2, thickness=1)
    elif shape == "ellipse":
        axes = (max(2, int(size * 1.4)), max(2, int(size * 0.7)))
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(mask, (int(cx), int(cy)), axes, angle, 0, 360, 1, thickness=-1)
        cv2.ellipse(mask, (int(cx), int(cy)), axes, angle, 0, 360, 2, thickness=1)
    else:
        if shape == "box":
            half_w, half_h = size * rng.uniform(0.7, 1.3), size * rng.uniform(0.7, 1.3)
            corners = [(-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)]
        else:  # triangle: three points around the centre, random rotation
            start = rng.uniform(0, 2 * np.pi)
            corners = [(size * 1.3 * np.cos(start + k * 2 * np.pi / 3),
                        size * 1.3 * np.sin(start + k * 2 * np.pi / 3)) for k in range(3)]
        points = np.array([[int(cx + dx), int(cy + dy)] for dx, dy in corners], np.int32)
        cv2.fillPoly(mask, [points], 1)
        cv2.polylines(mask, [points], True, 2, thickness=1)
    return mask


def render_scene(
    height: int, width: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``(H, W, 3)`` uint8 RGB image and ``(H, W)`` uint8 label (ADE convention)."""
    background = CLASSES[0]
    tint = rng.integers(-25, 26, size=3)
    base = np.clip(np.array(background.rgb) + tint, 0, 255).astype(np.float32)
    image = base * _texture(background.texture, height, width, rng)
    label = np.full((height, width), 1, np.uint8)
    for _ in range(int(rng.integers(2, 6))):
        value = int(rng.integers(2, SYNTHETIC_NUM_CLASS + 1))
        cls = CLASSES[value - 1]
        mask = _shape_mask(cls.shape, height, width, rng)
        colour = np.clip(np.array(cls.rgb) * rng.uniform(0.85, 1.1), 0, 255).astype(np.float32)
        inside = mask == 1
        image[inside] = (colour * _texture(cls.texture, height, width, rng))[inside]
        label[inside] = value
        outline = mask == 2
        image[outline] = 25.0
        label[outline] = 0
    return np.clip(image, 0, 255).round().astype(np.uint8), label


def _encode(ext: str, array: np.ndarray, params: Sequence[int] = ()) -> bytes:
    ok, buffer = cv2.imencode(ext, array, list(params))
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {ext} image")
    return buffer.tobytes()


def generate(
    out_dir: str | os.PathLike,
    num_train: int = 300,
    num_val: int = 40,
    seed: int = 0,
    min_size: int = 96,
    max_size: int = 160,
) -> Path:
    """Writes the synthetic dataset (see the module docstring) and returns ``out_dir``.

    Args:
        out_dir: output folder (created if needed; existing files of the same names are
            replaced).
        num_train, num_val: number of training / validation images.
        seed: the dataset is a pure function of the arguments.
        min_size, max_size: range of each image side in pixels (drawn independently).
    """
    if num_train < 0 or num_val < 0 or num_train + num_val == 0:
        raise ValueError(f"need at least one image, got num_train={num_train}, "
                         f"num_val={num_val}")
    if not 8 <= min_size <= max_size:
        raise ValueError(f"need 8 <= min_size <= max_size, got {min_size}, {max_size}")
    out = Path(out_dir)
    for split_index, ((split, prefix), count) in enumerate(zip(_SPLITS, (num_train, num_val))):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "annotations" / split).mkdir(parents=True, exist_ok=True)
        records = []
        for i in range(count):
            # one generator per image: files do not depend on generation order
            rng = np.random.default_rng([seed, split_index, i])
            height, width = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
            image, label = render_scene(height, width, rng)
            name = f"{prefix}_{i + 1:06d}"
            img_rel = f"images/{split}/{name}.jpg"
            seg_rel = f"annotations/{split}/{name}.png"
            bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            atomic_write_bytes(out / img_rel, _encode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY,
                                                              _JPEG_QUALITY]))
            atomic_write_bytes(out / seg_rel, _encode(".png", label))
            records.append({"fpath_img": img_rel, "fpath_segm": seg_rel,
                            "width": width, "height": height})
        write_odgt(out / f"{split}.odgt", records)
    # the Color column makes pictures draw each class in its own colour (data.dataset_palette)
    table = "Idx,Name,Color\n" + "".join(
        f"{i},{c.name},#{c.rgb[0]:02x}{c.rgb[1]:02x}{c.rgb[2]:02x}\n"
        for i, c in enumerate(CLASSES, start=1))
    atomic_write_text(out / "object_info.csv", table)
    logger.info("synthetic dataset: %d train + %d val images in %s", num_train, num_val, out)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m mit_semseg.data.synthetic",
        description="Write a small synthetic dataset in ADE20K format.",
    )
    parser.add_argument("--out", required=True, help="output folder (= DATASET.root_dataset)")
    parser.add_argument("--num-train", type=int, default=300)
    parser.add_argument("--num-val", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-size", type=int, default=96, help="smallest image side (px)")
    parser.add_argument("--max-size", type=int, default=160, help="largest image side (px)")
    args = parser.parse_args(argv)
    try:
        out = generate(args.out, args.num_train, args.num_val, args.seed, args.min_size,
                       args.max_size)
    except ValueError as exc:
        parser.error(str(exc))
    parser.exit(0, f"wrote {args.num_train} training and {args.num_val} validation images to "
                   f"{out} ({SYNTHETIC_NUM_CLASS} classes)\n")


if __name__ == "__main__":
    main()
