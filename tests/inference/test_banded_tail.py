"""The banded full-size tail equals upsampling then softmax over whole maps."""

import pytest
import torch
import torch.nn.functional as F

from mit_semseg.inference import banded_tail
from mit_semseg.inference.predict import PredictOptions, predict_labels, predict_probs

CPU = torch.device("cpu")
NUM_CLASS = 7


@pytest.mark.parametrize("feature,out", [((9, 13), (71, 99)), ((12, 10), (12, 10)),
                                         ((30, 20), (17, 11))])
def test_banded_tail_equals_upsample_then_softmax(monkeypatch, feature, out):
    monkeypatch.setattr(banded_tail, "BAND_BYTES", 4 * NUM_CLASS * out[1] * 5)  # 5-row bands
    logits = torch.randn(2, NUM_CLASS, *feature)
    upsampled = F.interpolate(logits, size=out, mode="bilinear", align_corners=False)
    expected = F.softmax(upsampled, dim=1)
    scores = torch.full((2, NUM_CLASS, *out), 0.25)
    banded_tail.add_probabilities(scores, logits, terms=2)
    torch.testing.assert_close(scores, 0.25 + expected / 2, rtol=0, atol=1e-6)
    banded_tail.add_probabilities(scores, logits, overwrite=True)
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-6)
    labels = banded_tail.labels_from_logits(logits, out)
    assert labels.shape == (2, *out) and torch.equal(labels, upsampled.argmax(1))


def test_only_a_module_prepared_for_fast_inference_takes_the_banded_tail(model):
    # the plain module keeps the original's full-size operations (bit-identical scores,
    # tests/cli/test_scripts_upstream_equivalence.py)
    assert banded_tail.fast_logits(model) is None
    model.fast_tail = True
    assert banded_tail.fast_logits(model) == model.logits
    assert banded_tail.fast_logits(banded_tail.LogitsSegmenter(model.logits)) is not None


def test_predict_labels_single_scale_is_the_argmax_of_predict_probs(model):
    model.fast_tail = True  # takes the argmax-of-logits shortcut
    img = [torch.randn(1, 3, 40, 56)]
    labels = predict_labels(model, img, (45, 61), CPU)
    assert labels.shape == (45, 61) and labels.dtype == torch.long
    assert torch.equal(labels, predict_probs(model, img, (45, 61), CPU).argmax(0))


def test_predict_probs_by_bands_equals_the_modules_own_probabilities(model, monkeypatch):
    monkeypatch.setattr(banded_tail, "BAND_BYTES", 4 * NUM_CLASS * 61 * 7)
    model.fast_tail = True
    imgs = [torch.randn(1, 3, 40, 56), torch.randn(1, 3, 48, 64)]
    with torch.inference_mode():
        expected = sum(model({"img_data": x}, segSize=(45, 61)) for x in imgs) / 2
        mirrored = sum(model({"img_data": x.flip(-1)}, segSize=(45, 61)).flip(-1) for x in imgs)
    torch.testing.assert_close(predict_probs(model, imgs, (45, 61), CPU), expected[0],
                               rtol=0, atol=1e-6)
    with_flip = predict_probs(model, imgs, (45, 61), CPU, PredictOptions(flip=True))
    torch.testing.assert_close(with_flip, (expected[0] * 2 + mirrored[0]) / 4, rtol=0,
                               atol=1e-6)
