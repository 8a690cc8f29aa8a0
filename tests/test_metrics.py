import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mit_semseg import metrics
from mit_semseg.metrics import (
    accuracy,
    confusion_matrix,
    intersectionAndUnion,
    scores_from_confusion,
)


def _random_pair(rng, shape, num_class, ignore_frac=0.2):
    label = rng.integers(0, num_class, size=shape)
    label[rng.random(shape) < ignore_frac] = -1
    pred = rng.integers(0, num_class, size=shape)
    return pred, label


def _brute_force(preds, labels, num_class):
    """Dataset-level IoU and accuracy by per-class mask counting, no matrix involved."""
    inter = np.zeros(num_class)
    union = np.zeros(num_class)
    correct = 0
    valid_total = 0
    for pred, label in zip(preds, labels):
        valid = label >= 0
        for c in range(num_class):
            p = (pred == c) & valid
            g = label == c
            inter[c] += np.logical_and(p, g).sum()
            union[c] += np.logical_or(p, g).sum()
        correct += ((pred == label) & valid).sum()
        valid_total += valid.sum()
    iou = np.array([inter[c] / union[c] if union[c] else 0.0 for c in range(num_class)])
    return iou, correct / valid_total


def test_confusion_matrix_counts_pairs():
    pred = np.array([[0, 1, 2], [2, 2, 0]])
    label = np.array([[0, 1, 1], [-1, 2, 0]])
    conf = confusion_matrix(pred, label, 3)
    expected = np.array([[2, 0, 0], [0, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(conf, expected)
    assert conf.dtype == np.int64


def test_scores_match_brute_force_over_several_images():
    rng = np.random.default_rng(1)
    num_class = 7
    preds, labels = zip(*[_random_pair(rng, (13, 17), num_class) for _ in range(5)])
    # class 6 absent from labels and predictions: IoU 0, counted in the mean as the original
    preds = [np.where(p == 6, 0, p) for p in preds]
    labels = [np.where(lab == 6, 1, lab) for lab in labels]
    conf = sum(confusion_matrix(p, lab, num_class) for p, lab in zip(preds, labels))
    scores = scores_from_confusion(conf)
    iou, acc = _brute_force(preds, labels, num_class)
    np.testing.assert_allclose(scores["iou"], iou, rtol=1e-9)
    assert scores["miou"] == pytest.approx(iou.mean(), rel=1e-9)
    assert scores["miou_present"] == pytest.approx(iou[:6].mean(), rel=1e-9)
    assert scores["pixel_acc"] == pytest.approx(acc, rel=1e-9)
    assert scores["overall"] == pytest.approx((iou.mean() + acc) / 2, rel=1e-9)
    assert not scores["present"][6] and scores["present"][:6].all()
    assert scores["num_pixels"] == sum(int((lab >= 0).sum()) for lab in labels)


def test_class_acc_is_recall_not_precision():
    # class 0: 4 labelled pixels, 3 found (recall 3/4); 5 predicted, 3 right (precision 3/5)
    label = np.array([0, 0, 0, 0, 1, 1, 1, 2, -1])
    pred = np.array([0, 0, 0, 1, 0, 0, 1, 2, 0])
    scores = scores_from_confusion(confusion_matrix(pred, label, 3))
    recall = [((pred == c) & (label == c)).sum() / (label == c).sum() for c in range(3)]
    np.testing.assert_allclose(scores["class_acc"], recall, rtol=1e-9)
    np.testing.assert_allclose(scores["class_acc"], [3 / 4, 1 / 3, 1.0], rtol=1e-9)


def test_perfect_prediction_scores_one():
    label = np.array([[0, 1], [2, -1]])
    scores = scores_from_confusion(confusion_matrix(np.array([[0, 1], [2, 0]]), label, 3))
    assert scores["miou"] == pytest.approx(1.0)
    assert scores["pixel_acc"] == pytest.approx(1.0)


def test_accepts_tensors():
    pred = torch.tensor([[1, 0]])
    label = torch.tensor([[1, 1]])
    np.testing.assert_array_equal(confusion_matrix(pred, label, 2), [[0, 0], [1, 1]])


@pytest.mark.parametrize(
    "pred, label, msg",
    [
        (np.array([0, 1]), np.array([0, 5]), "label value 5 >= num_class 3"),
        (np.array([0, 3]), np.array([0, 1]), "prediction value 3"),
        (np.array([0, 1, 2]), np.array([0, 1]), "shape"),
        (np.array([0.5, 1.0]), np.array([0, 1]), "integer"),
    ],
)
def test_bad_inputs_raise_clear_errors(pred, label, msg):
    with pytest.raises((ValueError, TypeError), match=msg):
        confusion_matrix(pred, label, 3)


def test_compat_helpers_match_confusion_scores():
    rng = np.random.default_rng(2)
    pred, label = _random_pair(rng, (9, 11), 5)
    acc, valid = accuracy(pred, label)
    assert valid == int((label >= 0).sum())
    assert acc == pytest.approx(((pred == label) & (label >= 0)).sum() / valid)
    inter, union = intersectionAndUnion(pred, label, 5)
    iou, _ = _brute_force([pred], [label], 5)
    np.testing.assert_allclose(inter / union, iou)


_UPSTREAM_SNIPPET = """
import json, sys
import numpy as np
from mit_semseg.utils import AverageMeter, accuracy, intersectionAndUnion
data = json.load(sys.stdin)
num_class = data["num_class"]
acc_meter, inter_meter, union_meter = AverageMeter(), AverageMeter(), AverageMeter()
for pred, label in zip(data["preds"], data["labels"]):
    pred, label = np.array(pred), np.array(label)
    acc, pix = accuracy(pred, label)
    inter, union = intersectionAndUnion(pred, label, num_class)
    acc_meter.update(acc, pix)
    inter_meter.update(inter)
    union_meter.update(union)
iou = inter_meter.sum / (union_meter.sum + 1e-10)
print(json.dumps({"iou": iou.tolist(), "miou": float(iou.mean()), "acc": acc_meter.average()}))
"""


def test_agrees_with_original_eval_formula(upstream_path):
    """The original eval.py aggregation (run from the original package) gives the same numbers."""
    rng = np.random.default_rng(3)
    num_class = 6
    preds, labels = zip(*[_random_pair(rng, (8, 10), num_class) for _ in range(4)])
    preds = [np.where(p == 5, 0, p) for p in preds]  # class 5 never predicted
    payload = {
        "num_class": num_class,
        "preds": [p.tolist() for p in preds],
        "labels": [lab.tolist() for lab in labels],
    }
    env = dict(os.environ, PYTHONPATH=str(upstream_path))
    out = subprocess.run(
        [sys.executable, "-c", _UPSTREAM_SNIPPET],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        env=env,
        cwd=upstream_path,  # keep our own package (same import name) off sys.path
        check=True,
    )
    ref = json.loads(out.stdout)
    conf = sum(confusion_matrix(p, lab, num_class) for p, lab in zip(preds, labels))
    scores = scores_from_confusion(conf)
    np.testing.assert_allclose(scores["iou"], ref["iou"], rtol=1e-12)
    assert scores["miou"] == pytest.approx(ref["miou"], rel=1e-12)
    assert scores["pixel_acc"] == pytest.approx(ref["acc"], rel=1e-9)


def test_average_meter_is_weighted():
    meter = metrics.AverageMeter()
    meter.update(1.0, weight=1)
    meter.update(4.0, weight=3)
    assert meter.value() == 4.0
    assert meter.average() == pytest.approx((1 + 12) / 4)
    arrays = metrics.AverageMeter()
    arrays.update(np.array([1.0, 2.0]))
    arrays.update(np.array([3.0, 6.0]))
    np.testing.assert_allclose(arrays.sum, [4.0, 8.0])
