"""The synthetic demo: generate data, train from scratch on the CPU, evaluate (slow, ~5 min).

Run with ``python -m pytest -m slow tests/scripts/test_train_demo.py``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = REPO_ROOT / "config" / "synthetic-mobilenetv2dilated-c1_deepsup.yaml"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_synthetic_demo_reaches_target_miou(tmp_path):
    from mit_semseg.config import load_config

    cfg = load_config(CONFIG)
    data, out = tmp_path / "synthetic", tmp_path / "ckpt"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    paths = ["DIR", str(out), "DATASET.root_dataset", str(data),
             "DATASET.list_train", str(data / "training.odgt"),
             "DATASET.list_val", str(data / "validation.odgt")]
    steps = [
        ["-m", "mit_semseg.data.synthetic", "--out", str(data)],
        ["train.py", "--cfg", str(CONFIG), *paths],
        ["eval.py", "--cfg", str(CONFIG), "--gpu", "cpu", *paths],
    ]
    for args in steps:
        result = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, text=True,
                                capture_output=True)
        assert result.returncode == 0, f"{args[0]}: {result.stderr[-3000:]}"
    assert (out / f"encoder_{cfg.VAL.checkpoint}").is_file()
    metrics = json.loads((out / "eval_metrics.json").read_text())
    assert metrics["mean_iou"] >= 0.80, metrics
