import json

import cv2
import numpy as np
import pytest
from eval_fixtures import CFG, NUM_VAL, run_script, tiny_run  # noqa: F401

from mit_semseg.metrics import scores_from_confusion


def _labelled_pixels(data_dir):
    """Labelled pixels of the validation annotations, read straight from the PNGs."""
    total = 0
    for line in (data_dir / "validation.odgt").read_text().splitlines():
        record = json.loads(line)
        seg = cv2.imread(str(data_dir / record["fpath_segm"]), cv2.IMREAD_UNCHANGED)
        total += int((seg > 0).sum())
    return total


def test_eval_writes_metrics_files(tiny_run):  # noqa: F811
    proc = run_script(
        "eval.py", "--cfg", str(CFG), "--gpu", "cpu",
        *tiny_run.overrides(**{"VAL.visualize": "True"}),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ckpt = tiny_run.ckpt
    conf = np.load(ckpt / "confusion_matrix.npy")
    assert conf.shape == (tiny_run.num_class, tiny_run.num_class) and conf.dtype == np.int64
    # every labelled pixel of the original-resolution annotations is counted exactly once
    assert conf.sum() == _labelled_pixels(tiny_run.data)
    metrics = json.loads((ckpt / "eval_metrics.json").read_text())
    scores = scores_from_confusion(conf)
    assert metrics["mean_iou"] == pytest.approx(scores["miou"])
    assert metrics["pixel_accuracy"] == pytest.approx(scores["pixel_acc"])
    assert metrics["num_images"] == NUM_VAL and metrics["processes"] == 1
    names = [c["name"] for c in metrics["per_class"]]
    assert len(names) == tiny_run.num_class and not any(n.startswith("class_") for n in names)
    assert (ckpt / "class_iou.csv").is_file() and (ckpt / "confusion_matrix.png").is_file()
    assert len(list((ckpt / "result").glob("*.png"))) == NUM_VAL
    out = proc.stdout
    assert f"Mean IoU: {scores['miou']:.4f}, Accuracy: {100 * scores['pixel_acc']:.2f}%" in out
    assert "Overall:" in out and "Inference Time:" in out
    assert out.count("class [") == tiny_run.num_class and names[0] in out


def test_eval_missing_checkpoint_exits_with_clear_error(tiny_run):  # noqa: F811
    proc = run_script(
        "eval.py", "--cfg", str(CFG), "--gpu", "cpu",
        *tiny_run.overrides(**{"VAL.checkpoint": "epoch_99.pth"}),
    )
    assert proc.returncode == 2
    assert "encoder_epoch_99.pth" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_eval_bad_device_and_bad_key(tiny_run):  # noqa: F811
    proc = run_script("eval.py", "--cfg", str(CFG), "--gpu", "tpu", *tiny_run.overrides())
    assert proc.returncode == 2 and "tpu" in proc.stdout + proc.stderr
    proc = run_script("eval.py", "--cfg", str(CFG), "--gpu", "cpu", "VAL.chekpoint", "x")
    assert proc.returncode == 2 and "VAL.chekpoint" in proc.stdout + proc.stderr
