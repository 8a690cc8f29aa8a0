import dataclasses

import cv2
import numpy as np
import pytest
import torch

from mit_semseg.app.catalog import run_choice
from mit_semseg.app.photos import Limits, read_photo
from mit_semseg.app.segment import CONFIDENCE_SCALE, Segmentation, segment
from mit_semseg.inference.predict import predict_labels, predict_probs
from mit_semseg.viz import class_fractions, prediction_panel

CPU = torch.device("cpu")


def _png(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


@pytest.fixture(scope="module")
def segmented(runs, example_photo):
    choice = run_choice(runs[0].folder, "run-1", CPU)
    module = choice.trained_model(2).load(CPU)
    sample = read_photo(example_photo.read_bytes(), "coffee.jpg",
                        choice.dataset_options("single"), Limits())
    return segment(module, sample, choice, 2, "single", CPU, "coffee.jpg"), module, sample


def test_the_labels_are_predict_labels_and_the_confidence_their_probability(segmented):
    result, module, sample = segmented
    options = result.choice.predict_options("single")
    expected = predict_labels(module, sample["img_data"], (400, 600), CPU, options)
    probs = predict_probs(module, sample["img_data"], (400, 600), CPU, options)
    assert result.labels.dtype == np.uint16 and result.labels.shape == (400, 600)
    np.testing.assert_array_equal(result.labels, expected.numpy())
    np.testing.assert_allclose(result.confidence, probs.max(0).values.numpy(), atol=1e-6)
    assert result.seconds > 0 and result.image is sample["img_ori"]


def test_the_files_of_a_result(segmented):
    result, _, sample = segmented
    maps = result.maps()
    assert len(maps) == 2 * 2 * 400 * 600
    labels = np.frombuffer(maps[: 2 * 400 * 600], "<u2").reshape(400, 600)
    confidence = np.frombuffer(maps[2 * 400 * 600:], "<u2").reshape(400, 600)
    np.testing.assert_array_equal(labels, result.labels)
    np.testing.assert_allclose(confidence / CONFIDENCE_SCALE, result.confidence, atol=0.5 / 65535)
    stored = _png(result.label_png())
    assert stored.dtype == np.uint8
    np.testing.assert_array_equal(stored, result.labels + 1)  # test.py's convention
    panel = prediction_panel(sample["img_ori"], result.labels, result.choice.palette,
                             result.choice.class_names)
    np.testing.assert_array_equal(_png(result.panel_png())[..., ::-1], panel)
    photo = _png(result.image_jpeg())[..., ::-1].astype(int)
    assert photo.shape == (400, 600, 3) and np.abs(photo - sample["img_ori"]).mean() < 3
    assert result.shares() == class_fractions(result.labels, 8)
    assert result.file_stem() == "coffee_run-1_epoch2_single"


def test_many_classes_are_stored_in_16_bits_and_releases_have_no_epoch_in_names(segmented):
    result, _, _ = segmented
    wide = dataclasses.replace(result.choice, num_class=300, kind="released",
                               key="ade20k-something")
    big = Segmentation(wide, 20, "multi", "IMG.2024.jpeg", result.image,
                       result.labels + 250, result.confidence, 0.1)
    stored = _png(big.label_png())
    assert stored.dtype == np.uint16
    np.testing.assert_array_equal(stored, result.labels.astype(np.int64) + 251)
    assert big.file_stem() == "IMG.2024_ade20k-something_multi"
