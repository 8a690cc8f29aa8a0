"""scripts/demo_summary.py: the scores and the file list printed at the end of the demo."""

import json
import subprocess
import sys
from pathlib import Path

from eval_fixtures import REPO_ROOT, load_script

SCRIPT = REPO_ROOT / "scripts" / "demo_summary.py"
demo_summary = load_script("scripts/demo_summary.py")


def _touch(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("x")


def test_describe_lists_every_file_grouping_epochs_and_big_folders(tmp_path):
    _touch(tmp_path, "log.txt", "training_curves.png", "checkpoint_last.pth",
           *[f"encoder_epoch_{i}.pth" for i in (1, 2, 3)], "decoder_epoch_2.pth",
           "decoder_epoch_5.pth", *[f"result/img_{i}.png" for i in range(4)], "labels/a.png")
    assert demo_summary.describe(tmp_path) == [
        "checkpoint_last.pth",
        "decoder_epoch_2.pth",
        "decoder_epoch_5.pth",  # not consecutive: listed one by one
        "encoder_epoch_{1..3}.pth",
        "labels/a.png",  # small folders file by file
        "log.txt",
        "result/ (4 files)",
        "training_curves.png",
    ]


def test_the_printed_scores_are_eval_metrics_json(tmp_path):
    data, ckpt, out = tmp_path / "data", tmp_path / "ckpt", tmp_path / "out"
    _touch(data, "training.odgt")
    _touch(out, "val_000001.png")
    _touch(ckpt, "training_curves.png")
    (ckpt / "eval_metrics.json").write_text(json.dumps({"mean_iou": 0.81234,
                                                         "pixel_accuracy": 0.946549}))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--data", str(data), "--ckpt", str(ckpt),
                           "--out", str(out)], capture_output=True, text=True, check=True)
    lines = proc.stdout.splitlines()
    assert lines[0] == ("Validation mean IoU: 0.8123, pixel accuracy: 94.65% "
                        "(target mean IoU >= 0.75)")
    for name in ("training.odgt", "val_000001.png", "training_curves.png", "eval_metrics.json"):
        assert f"    {name}" in lines
