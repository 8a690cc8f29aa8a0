"""Fixtures for the data tests: a tiny synthetic dataset and hand-made samples."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from yacs.config import CfgNode


def write_rgb(path: Path, image: np.ndarray) -> None:
    """Writes an RGB uint8 image (PNG is lossless, so tests can compare pixels exactly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def write_label(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), label)


def write_lines(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def make_opt(**overrides) -> CfgNode:
    """A ``cfg.DATASET``-like node."""
    opt = dict(imgSizes=(32,), imgMaxSize=1000, padding_constant=8, segm_downsampling_rate=1,
               random_flip=False, num_class=5)
    opt.update(overrides)
    return CfgNode(opt)


class Samples:
    """Builds (image, label) files under a root and returns their odgt record."""

    def __init__(self, root: Path):
        self.root = root
        self.count = 0

    def add(self, image: np.ndarray, label: np.ndarray, **record_overrides) -> dict:
        self.count += 1
        img_rel, seg_rel = f"img/{self.count:03d}.png", f"seg/{self.count:03d}.png"
        write_rgb(self.root / img_rel, image)
        write_label(self.root / seg_rel, label)
        record = {"fpath_img": img_rel, "fpath_segm": seg_rel,
                  "width": image.shape[1], "height": image.shape[0]}
        record.update(record_overrides)
        return record

    def odgt(self, records, name="list.odgt") -> Path:
        return write_lines(self.root / name, records)


@pytest.fixture
def samples(tmp_path) -> Samples:
    return Samples(tmp_path)


def random_pair(rng: np.random.Generator, height: int, width: int, num_class: int = 5):
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    label = rng.integers(0, num_class + 1, size=(height, width), dtype=np.uint8)
    return image, label


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    from mit_semseg.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("synthetic"), num_train=12, num_val=3, seed=0)
