"""Training runs with random but varied weights, for the app's tests.

A run folder as ``train.py`` leaves it: ``config.yaml`` and ``{encoder,decoder}_epoch_N.pth``
of the synthetic demo's architecture (MobileNetV2-dilated + C1 deep supervision, 8 classes),
whose dataset root holds the synthetic class table (names and colours). The weights are random,
with varied BatchNorm statistics and the classifier's bias centred on an example photo's mean
scores, so that every class shows up somewhere on a real photograph and the labels change from
one region to the next (an untrained network would paint nearly everything one class).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
CFG = REPO_ROOT / "config" / "synthetic-mobilenetv2dilated-c1_deepsup.yaml"
# three scales, so that the single-scale mode (the middle one) and multi-scale differ
SCALES = "(64, 96, 128)"
SINGLE_SCALE = 96


@dataclass
class Run:
    folder: Path
    data: Path
    epochs: tuple[int, ...]


def _varied_weights(seed: int, photo: Path):
    from model_helpers import randomise_batchnorm

    from mit_semseg.data.datasets import TestDataset
    from mit_semseg.data.synthetic import SYNTHETIC_NUM_CLASS
    from mit_semseg.models import build_segmentation_model

    torch.manual_seed(seed)
    model = randomise_batchnorm(build_segmentation_model(
        "mobilenetv2dilated", "c1_deepsup", SYNTHETIC_NUM_CLASS, fc_dim=320)).eval()
    sample = TestDataset([str(photo)], {"imgSizes": (96,), "imgMaxSize": 256,
                                        "padding_constant": 8})[0]
    with torch.no_grad():
        scores = model.logits(sample["img_data"][0])  # (1, C, h, w)
        model.decoder.conv_last.bias.sub_(scores.mean((0, 2, 3)))
    return model


def make_run(root: Path, name: str, seeds: dict[int, int], photo: Path) -> Run:
    """A run in ``root/name`` with one epoch per ``{epoch: seed}``."""
    from mit_semseg.config import load_config
    from mit_semseg.data.synthetic import generate

    data = root / f"{name}_data"
    generate(data, num_train=1, num_val=0, min_size=16, max_size=16)  # object_info.csv
    folder = root / name
    folder.mkdir(parents=True)
    cfg = load_config(CFG, ["DIR", str(folder), "DATASET.root_dataset", str(data),
                            "DATASET.imgSizes", SCALES, "DATASET.imgMaxSize", "256",
                            "MODEL.fast_inference", "False"])
    (folder / "config.yaml").write_text(cfg.dump(), encoding="utf-8")
    for epoch, seed in seeds.items():
        model = _varied_weights(seed, photo)
        torch.save(model.encoder.state_dict(), folder / f"encoder_epoch_{epoch}.pth")
        torch.save(model.decoder.state_dict(), folder / f"decoder_epoch_{epoch}.pth")
    return Run(folder, data, tuple(sorted(seeds)))


@pytest.fixture(scope="session")
def example_photo() -> Path:
    return REPO_ROOT / "mit_semseg" / "app" / "examples" / "coffee.jpg"


@pytest.fixture(scope="session")
def runs(tmp_path_factory, example_photo) -> tuple[Run, Run]:
    """Two runs: ``alpha`` with epochs 1 and 2 (other weights), ``beta`` with epoch 3."""
    root = tmp_path_factory.mktemp("app_runs")
    return (make_run(root, "alpha", {1: 1, 2: 2}, example_photo),
            make_run(root, "beta", {3: 3}, example_photo))


def _test_py_labels(run: Run, epoch: int, photo: Path, out: Path, scales: str) -> Path:
    import os
    import subprocess

    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "test.py"), "--imgs", str(photo), "--cfg",
         str(run.folder / "config.yaml"), "--gpus", "cpu", "DIR", str(run.folder),
         "TEST.checkpoint", f"epoch_{epoch}.pth", "TEST.result", str(out),
         "TEST.save_label", "True", "DATASET.imgSizes", scales],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES=""))
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "labels" / f"{photo.stem}.png"


@pytest.fixture(scope="session")
def test_py_labels():
    """``(run, epoch, photo, out_dir, scales) -> path``: the label PNG ``test.py`` writes for
    ``photo`` with ``run`` at ``epoch`` and ``DATASET.imgSizes scales`` (a subprocess, as a
    user runs it)."""
    return _test_py_labels
