"""Our datasets against the original 1.0.0's on the same image files.

The original shares our import name, so it runs once per module in a subprocess
(``upstream_dataset_runner.py``) with only ``.upstream/`` on its path; the test is skipped when
``.upstream/`` is absent (``scripts/test.sh`` installs it). Files: JPEGs and PNGs of odd sizes,
landscape, portrait, square and grayscale, with short sides below and above the requested ones
(so they are both shrunk, where antialiasing matters, and upscaled).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_opt, write_lines
from PIL import Image

from mit_semseg.data import TestDataset, TrainDataset, ValDataset

RUNNER = Path(__file__).with_name("upstream_dataset_runner.py")
EVAL_OPT = {"imgSizes": [24, 37, 64], "imgMaxSize": 90, "padding_constant": 8}
TRAIN_OPT = {"imgSizes": [24, 64], "imgMaxSize": 90, "padding_constant": 8,
             "segm_downsampling_rate": 4}
NUM_CLASS = 8
# (name, height, width, grayscale): every short side (33..50) is shrunk to 24 and upscaled to 64
IMAGES = [("land.jpg", 45, 61, False), ("land2.png", 38, 53, False), ("port.png", 67, 41, False),
          ("port2.jpg", 59, 33, False), ("gray.jpg", 50, 50, True)]
TRAIN_INDICES = [0, 1, 2, 3, 4, 5]


def _scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Stripes, a sawtooth and noise: fine detail, so an unfiltered shrink would alias."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.stack([128 + 90 * np.sin(x / 1.3 + y / 7.3), 128 + 90 * np.cos(y / 1.7),
                      (x * 37 + y * 13) % 256], axis=-1)
    return np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)


def _label(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """5x5 blocks of classes 0..NUM_CLASS with 10% salt, so every sampled pixel matters."""
    blocks = rng.integers(0, NUM_CLASS + 1, (height // 5 + 1, width // 5 + 1), dtype=np.uint8)
    label = blocks.repeat(5, 0).repeat(5, 1)[:height, :width]
    salt = rng.random((height, width)) < 0.1
    label[salt] = rng.integers(0, NUM_CLASS + 1, int(salt.sum()), dtype=np.uint8)
    return label


@pytest.fixture(scope="module")
def compared(upstream_path, tmp_path_factory):
    """Writes the files, runs the original on them once, returns (root, odgt, its outputs)."""
    root = tmp_path_factory.mktemp("upstream_data")
    rng = np.random.default_rng(0)
    records = []
    for name, height, width, gray in IMAGES:
        image = Image.fromarray(_scene(rng, height, width))
        (image.convert("L") if gray else image).save(root / name, quality=90)
        label_name = Path(name).with_suffix(".label.png").name
        Image.fromarray(_label(rng, height, width), "L").save(root / label_name)
        records.append({"fpath_img": name, "fpath_segm": label_name, "width": width,
                        "height": height})
    odgt = write_lines(root / "list.odgt", records)
    spec = {"root": str(root), "odgt": str(odgt),
            "test_paths": [str(root / name) for name, *_ in IMAGES], "eval_opt": EVAL_OPT,
            "train_opt": TRAIN_OPT, "batch_per_gpu": 2, "train_indices": TRAIN_INDICES}
    spec_path, out_path = root / "spec.json", root / "upstream.pt"
    spec_path.write_text(json.dumps(spec))
    subprocess.run(
        [sys.executable, str(RUNNER), str(spec_path), str(out_path)],
        cwd=upstream_path,  # keeps our package (same import name) off sys.path
        env=dict(os.environ, PYTHONPATH=str(upstream_path), OMP_NUM_THREADS="1"),
        check=True, capture_output=True, timeout=300,
    )
    return root, odgt, torch.load(out_path, weights_only=True)


def _assert_multi_scale_equal(ours: dict, theirs: dict) -> None:
    np.testing.assert_array_equal(ours["img_ori"], theirs["img_ori"].numpy())
    assert [t.shape for t in ours["img_data"]] == [t.shape for t in theirs["img_data"]]
    for mine, original in zip(ours["img_data"], theirs["img_data"]):
        assert torch.equal(mine, original)  # bit for bit: same filter, same arithmetic


def test_val_dataset_equals_the_original(compared):
    root, odgt, upstream = compared
    ours = ValDataset(root, str(odgt), make_opt(**EVAL_OPT, num_class=NUM_CLASS))
    assert len(ours) == len(upstream["val"]) == len(IMAGES)
    for index, theirs in enumerate(upstream["val"]):
        item = ours[index]
        _assert_multi_scale_equal(item, theirs)
        assert torch.equal(item["seg_label"], theirs["seg_label"])
        assert item["info"] == theirs["info"]


def test_test_dataset_equals_the_original(compared):
    root, _, upstream = compared
    ours = TestDataset([str(root / name) for name, *_ in IMAGES], make_opt(**EVAL_OPT))
    upscaled = 0
    for index, theirs in enumerate(upstream["test"]):
        item = ours[index]
        _assert_multi_scale_equal(item, theirs)
        upscaled += item["img_data"][-1].shape[-1] > item["img_ori"].shape[1]
    assert upscaled == len(IMAGES)  # the largest scale enlarges every image


def test_training_batches_equal_the_original(compared):
    root, odgt, upstream = compared
    opt = make_opt(**TRAIN_OPT, num_class=NUM_CLASS, random_flip=True)
    ours = TrainDataset(root, str(odgt), opt, batch_per_gpu=2, seed=0)
    index_of = {r["fpath_img"]: i for i, r in enumerate(ours.list_sample)}
    rate = TRAIN_OPT["segm_downsampling_rate"]
    for theirs in upstream["train"]:
        # give our dataset the plan the original drew (records, short side, flips)
        plan = ([index_of[p] for p in theirs["records"]], theirs["short"], theirs["flips"])
        ours.batch_plan = lambda index, plan=plan: plan
        item = ours[0]
        assert torch.equal(item["img_data"], theirs["img_data"])
        for b, record_index in enumerate(plan[0]):
            record = ours.list_sample[record_index]
            scale = min(plan[1] / min(record["height"], record["width"]),
                        TRAIN_OPT["imgMaxSize"] / max(record["height"], record["width"]))
            rows = -(-int(record["height"] * scale) // rate)
            cols = -(-int(record["width"] * scale) // rate)
            mine, original = item["seg_label"][b], theirs["seg_label"][b]
            assert torch.equal(mine[:rows, :cols], original[:rows, :cols])
            # canvas padding: we ignore it (-1), the original trained it as class 0
            outside = torch.ones_like(mine, dtype=torch.bool)
            outside[:rows, :cols] = False
            assert (mine[outside] == -1).all() and (original[outside] == 0).all()
    # the batches cover both scales and both flip states
    assert {t["short"] for t in upstream["train"]} == set(TRAIN_OPT["imgSizes"])
    assert {f for t in upstream["train"] for f in t["flips"]} == {True, False}
