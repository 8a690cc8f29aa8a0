"""The README demo end to end (without pip install): train briefly on CPU, reach mIoU >= 0.80."""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_reaches_target_miou(tmp_path):
    env = dict(
        os.environ,
        DEMO_SKIP_INSTALL="1",
        DEMO_DATA=str(tmp_path / "data"),
        DEMO_CKPT=str(tmp_path / "ckpt"),
        DEMO_OUT=str(tmp_path / "out"),
    )
    start = time.monotonic()
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "demo.sh")],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "ckpt" / "eval_metrics.json").read_text())
    print(f"demo: {elapsed:.0f}s, mIoU {metrics['mean_iou']:.4f}")
    assert metrics["mean_iou"] >= 0.80
    # the budget is 10 minutes including a pip install of about 2 minutes
    assert elapsed < 480
    assert list((tmp_path / "out").glob("*.png")) and "Outputs:" in proc.stdout
