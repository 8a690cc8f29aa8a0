import csv
import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mit_semseg.deploy.onnxruntime import OnnxRuntimeModel
from mit_semseg.inference.evaluation import (
    EvalJob,
    EvalResult,
    SavePanels,
    compute_backend,
    evaluate,
    format_class_table,
    format_summary,
    iter_samples,
    report_results,
    shard_ranges,
    write_results,
)
from mit_semseg.inference.predict import PredictOptions
from mit_semseg.inference.trained_model import TrainedModel
from mit_semseg.metrics import confusion_matrix, scores_from_confusion
from mit_semseg.viz import eval_panel

NUM_CLASS = 4
CPU = torch.device("cpu")
PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]], np.uint8)
NAMES = ["wall", "sky", "floor", "tree"]


class ChannelArgmaxSeg(nn.Module):
    """Predicts class = argmax over the first NUM_CLASS input channels (deterministic, exact)."""

    def forward(self, feed, *, segSize):
        x = feed["img_data"][:, :NUM_CLASS]
        return F.interpolate(x * 10, size=segSize, mode="nearest").softmax(1)


def _samples(n, seed=0, size=(6, 8)):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        scores = rng.normal(size=(1, NUM_CLASS, *size)).astype(np.float32)
        label = rng.integers(-1, NUM_CLASS, size=(1, *size))
        out.append(
            {
                "img_ori": rng.integers(0, 255, size=(*size, 3), dtype=np.uint8),
                "img_data": [torch.from_numpy(scores)],
                "seg_label": torch.from_numpy(label),
                "info": f"folder/img_{i}.jpg",
            }
        )
    return out


def _expected_conf(samples):
    conf = np.zeros((NUM_CLASS, NUM_CLASS), np.int64)
    for s in samples:
        pred = s["img_data"][0][0].numpy().argmax(0)
        label = s["seg_label"][0].numpy()
        for p, lab in zip(pred.ravel(), label.ravel()):
            if lab >= 0:
                conf[lab, p] += 1
    return conf


def test_evaluate_accumulates_exact_confusion(tmp_path):
    samples = _samples(5)
    calls = []
    result = evaluate(
        ChannelArgmaxSeg(),
        samples,
        NUM_CLASS,
        CPU,
        hooks=[SavePanels(tmp_path / "result", PALETTE, NAMES), lambda *_: calls.append(1)],
    )
    np.testing.assert_array_equal(result.confusion, _expected_conf(samples))
    assert result.num_images == 5 and len(calls) == 5 and result.seconds > 0
    files = sorted(p.name for p in (tmp_path / "result").iterdir())
    assert files == [f"img_{i}.png" for i in range(5)]
    # the picture of the first image: its ground truth and the model's prediction, named
    first = samples[0]
    pred = first["img_data"][0][0].numpy().argmax(0)
    expected = eval_panel(first["img_ori"], first["seg_label"][0].numpy(), pred, PALETTE, NAMES)
    panel = cv2.imread(str(tmp_path / "result" / "img_0.png"))
    np.testing.assert_array_equal(panel[..., ::-1], expected)


def test_sharded_results_add_up_to_the_whole():
    samples = _samples(7, seed=1)
    whole = evaluate(ChannelArgmaxSeg(), samples, NUM_CLASS, CPU)
    parts = [
        evaluate(ChannelArgmaxSeg(), samples[a:b], NUM_CLASS, CPU) for a, b in shard_ranges(7, 3)
    ]
    total = parts[0] + parts[1] + parts[2]
    np.testing.assert_array_equal(total.confusion, whole.confusion)
    assert total.num_images == 7


def test_iter_samples_unwraps_lists():
    samples = _samples(3)
    assert list(iter_samples([[samples[0]], samples[1], [samples[2]]])) == samples


@pytest.mark.parametrize("n,k", [(10, 3), (3, 5), (1, 1), (0, 2), (8, 8)])
def test_shard_ranges_contiguous_non_empty(n, k):
    ranges = shard_ranges(n, k)
    assert all(b > a for a, b in ranges)
    assert [i for a, b in ranges for i in range(a, b)] == list(range(n))
    assert len(ranges) == min(n, k)
    sizes = [b - a for a, b in ranges]
    assert not sizes or max(sizes) - min(sizes) <= 1


def test_write_results_files(tmp_path):
    conf = np.array([[5, 1, 0, 0], [2, 3, 0, 0], [0, 0, 4, 0], [0, 0, 0, 0]], np.int64)
    names = ["wall", "floor", "sky", "cat"]
    paths = write_results(tmp_path, EvalResult(conf, 2, 0.5), names, extra={"checkpoint": "e"})
    metrics = json.loads(paths["metrics"].read_text())
    scores = scores_from_confusion(conf)
    assert metrics["mean_iou"] == pytest.approx(scores["miou"])
    assert metrics["pixel_accuracy"] == pytest.approx(12 / 15)
    assert metrics["overall"] == pytest.approx((scores["miou"] + 12 / 15) / 2)
    assert metrics["mean_iou_present_classes"] == pytest.approx(scores["iou"][:3].mean())
    assert metrics["per_class"][1]["name"] == "floor"
    assert metrics["per_class"][1]["iou"] == pytest.approx(3 / 6)
    assert metrics["checkpoint"] == "e" and metrics["num_images"] == 2
    np.testing.assert_array_equal(np.load(paths["confusion"]), conf)
    rows = list(csv.DictReader(paths["class_iou"].open()))
    assert [r["name"] for r in rows] == names and rows[3]["present"] == "False"
    # "accuracy" is the share of each class' pixels found (recall: row-wise), not the share
    # of its predictions that are right (precision: 5/7 and 3/4 for the first two classes)
    recall = [5 / 6, 3 / 5, 1.0, 0.0]
    assert [c["accuracy"] for c in metrics["per_class"]] == pytest.approx(recall)
    assert [float(r["accuracy"]) for r in rows] == pytest.approx(recall)
    assert [int(r["gt_pixels"]) for r in rows] == [6, 5, 4, 0]
    assert [int(r["pred_pixels"]) for r in rows] == [7, 4, 4, 0]
    assert cv2.imread(str(paths["confusion_png"])) is not None
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("fast, amp", [(False, ""), (True, "bf16")])
def test_report_records_how_the_numbers_were_computed(tmp_path, fast, amp):
    model = TrainedModel("resnet18dilated", "c1", 2, tmp_path, "epoch_1.pth",
                         fast_inference=fast)
    job = EvalJob(model, tmp_path, str(tmp_path), "val.odgt", (300,), 1000, 8,
                  PredictOptions(amp=amp))
    result = EvalResult(np.array([[3, 1], [0, 2]], np.int64), 1, 0.1)
    report_results(job, result, [CPU, CPU], extra={"processes": 2})
    metrics = json.loads((tmp_path / "eval_metrics.json").read_text())
    assert metrics["fast_inference"] is fast
    assert metrics["precision"] == (amp or "fp32")
    assert metrics["backend"] == compute_backend(CPU)
    assert metrics["devices"] == ["cpu", "cpu"] and metrics["processes"] == 2


def test_results_go_to_out_dir_and_name_the_weights_and_the_onnxruntime_backend(tmp_path):
    """A released model's weights live in the cache; its results go elsewhere (DIR)."""
    onnxruntime = pytest.importorskip("onnxruntime")
    weights, out = tmp_path / "cache" / "model", tmp_path / "ckpt" / "model"
    model = OnnxRuntimeModel("resnet18dilated", "c1", 2, weights, "epoch_20.pth",
                             onnx_file=tmp_path / "m.onnx")
    job = EvalJob(model, out, str(tmp_path), "val.odgt", (300,), 1000, 8)
    report_results(job, EvalResult(np.array([[3, 1], [0, 2]], np.int64), 1, 0.1), [CPU])
    metrics = json.loads((out / "eval_metrics.json").read_text())
    assert not weights.exists()
    assert metrics["checkpoint"] == str(weights / "{encoder,decoder}_epoch_20.pth")
    assert model.backend == "onnxruntime" and metrics["backend"] == compute_backend(
        CPU, "onnxruntime")
    assert metrics["backend"].startswith(f"onnxruntime {onnxruntime.__version__} ")
    assert metrics["backend"].endswith(compute_backend(CPU))


def test_compute_backend_names_library_and_hardware():
    text = compute_backend(CPU)
    assert text.startswith(f"torch {torch.__version__}, CPU (")
    assert torch.backends.cpu.get_cpu_capability() in text


def test_text_formats():
    conf = confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 0]), 3)
    scores = scores_from_confusion(conf)
    table = format_class_table(scores, ["a", "b", "c"]).splitlines()
    assert table[0].startswith("class [0], IoU: 0.5000") and "a" in table[0]
    # class 0: 2 labelled pixels, 1 found (acc = recall 0.5), 1 prediction, right (precision 1)
    assert "acc: 0.5000" in table[0] and "acc: 1.0000" in table[1]
    assert table[2].endswith("(absent)")
    summary = format_summary(scores, 0.25)
    assert summary == (
        f"Mean IoU: {scores['miou']:.4f}, Accuracy: 66.67%, "
        f"Overall: {scores['overall']:.4f}, Inference Time: 0.2500s"
    )


