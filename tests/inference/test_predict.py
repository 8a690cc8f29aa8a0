import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mit_semseg.inference.predict import (
    PredictOptions,
    predict_labels,
    predict_labels_and_confidence,
    predict_probs,
    sliding_window_starts,
    window_from,
)

NUM_CLASS = 5
CPU = torch.device("cpu")


class TinySeg(nn.Module):
    """Stands in for SegmentationModule: conv -> upsample to segSize -> softmax (or the reverse)."""

    def __init__(self, kernel_size=1, softmax_first=False):
        super().__init__()
        self.conv = nn.Conv2d(3, NUM_CLASS, kernel_size, padding=kernel_size // 2)
        self.softmax_first = softmax_first
        self.calls = []

    def forward(self, feed, *, segSize):
        x = feed["img_data"]
        self.calls.append(tuple(x.shape[2:]))
        out = self.conv(x)
        if self.softmax_first:
            out = out.softmax(1)
        out = F.interpolate(out, size=segSize, mode="bilinear", align_corners=False)
        return out if self.softmax_first else out.softmax(1)


def _direct(model, x, size):
    with torch.no_grad():
        return model({"img_data": x}, segSize=size)[0]


def test_single_scale_equals_module_output_and_is_inference_mode():
    model = TinySeg(3).eval()
    x = torch.randn(1, 3, 16, 24)
    out = predict_probs(model, [x], (20, 30), CPU)
    assert out.shape == (NUM_CLASS, 20, 30)
    assert not out.requires_grad
    torch.testing.assert_close(out, _direct(model, x, (20, 30)), rtol=0, atol=0)


def test_multi_scale_is_mean_over_scales():
    model = TinySeg(3).eval()
    xs = [torch.randn(1, 3, 16, 24), torch.randn(1, 3, 24, 32), torch.randn(1, 3, 8, 8)]
    out = predict_probs(model, xs, (12, 18), CPU)
    expected = sum(_direct(model, x, (12, 18)) for x in xs) / 3
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out.sum(0), torch.ones(12, 18))


def test_flip_of_flip_equivariant_model_changes_nothing():
    model = TinySeg(1).eval()  # a 1x1 conv commutes with a horizontal flip
    x = torch.randn(1, 3, 10, 14)
    plain = predict_probs(model, [x], (10, 14), CPU)
    flipped = predict_probs(model, [x], (10, 14), CPU, PredictOptions(flip=True))
    torch.testing.assert_close(flipped, plain)
    assert model.calls == [(10, 14)] * 3


def test_flip_averages_flipped_back_prediction():
    model = TinySeg(3).eval()
    torch.nn.init.normal_(model.conv.weight)  # clearly asymmetric kernel
    x = torch.randn(1, 3, 10, 14)
    out = predict_probs(model, [x], (10, 14), CPU, PredictOptions(flip=True))
    expected = (_direct(model, x, (10, 14)) + _direct(model, x.flip(-1), (10, 14)).flip(-1)) / 2
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, _direct(model, x, (10, 14)), atol=1e-4)


@pytest.mark.parametrize("window", [8, (8, 5), (7, 7), (16, 3)])
def test_sliding_window_equals_full_image_for_pixelwise_model(window):
    model = TinySeg(1).eval()
    x = torch.randn(1, 3, 19, 26)
    full = predict_probs(model, [x], (19, 26), CPU)
    tiled = predict_probs(model, [x], (19, 26), CPU, PredictOptions(window=window))
    torch.testing.assert_close(tiled, full)
    size = window if isinstance(window, int) else window[0]
    assert max(max(c) for c in model.calls[1:]) <= size
    assert len(model.calls) > 2  # really tiled


def test_sliding_window_resizes_to_seg_size():
    model = TinySeg(1, softmax_first=True).eval()
    xs = [torch.randn(1, 3, 19, 26), torch.randn(1, 3, 9, 13)]
    full = predict_probs(model, xs, (30, 40), CPU, PredictOptions(flip=True))
    tiled = predict_probs(model, xs, (30, 40), CPU, PredictOptions(flip=True, window=(8, 6)))
    torch.testing.assert_close(tiled, full)


def test_small_input_skips_windowing():
    model = TinySeg(1).eval()
    predict_probs(model, [torch.randn(1, 3, 6, 6)], (6, 6), CPU, PredictOptions(window=8))
    assert model.calls == [(6, 6)]


@pytest.mark.parametrize("length,size,stride", [(10, 4, 3), (10, 4, 4), (3, 4, 2), (100, 30, 7)])
def test_sliding_window_starts_cover_everything(length, size, stride):
    starts = sliding_window_starts(length, size, stride)
    covered = set()
    for s in starts:
        covered.update(range(s, min(s + size, length)))
        assert s >= 0 and (s + size <= length or length <= size)
    assert covered == set(range(length))
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


def test_bad_window_and_empty_input():
    model = TinySeg(1).eval()
    with pytest.raises(ValueError, match="stride"):
        predict_probs(model, [torch.randn(1, 3, 20, 20)], (20, 20), CPU,
                      PredictOptions(window=(8, 9)))
    with pytest.raises(ValueError, match="empty"):
        predict_probs(model, [], (20, 20), CPU)


@pytest.fixture(scope="module")
def varied_c1():
    """A plain and a fast-inference (BatchNorm folded, banded tail) MobileNetV2 + C1 with
    the same random weights and non-trivial BatchNorm statistics, so that labels vary."""
    import copy

    from mit_semseg.inference.fast_path import CONV_PLANS, optimize_for_inference
    from mit_semseg.models import build_segmentation_model

    torch.manual_seed(3)
    plain = build_segmentation_model("mobilenetv2dilated", "c1", NUM_CLASS, fc_dim=320).eval()
    for m in plain.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    fast = optimize_for_inference(copy.deepcopy(plain), CPU, plan=CONV_PLANS[-1])
    return plain, fast


@pytest.mark.parametrize("image_size,seg_size", [((33, 47), (33, 47)), ((45, 61), (67, 93)),
                                                 ((57, 41), (29, 121))])
def test_predict_labels_single_scale_equals_the_argmax_of_the_probabilities(
        varied_c1, image_size, seg_size):
    """test.py's single-scale path: on a fast-inference module the argmax of the upsampled
    logits (no softmax), on the plain module the original's full-size path, unchanged."""
    plain, fast = varied_c1
    image = [torch.randn(1, 3, *image_size)]
    for module in (plain, fast):
        labels = predict_labels(module, image, seg_size, CPU)
        assert labels.shape == seg_size and labels.dtype == torch.long
        assert torch.equal(labels, predict_probs(module, image, seg_size, CPU).argmax(0))
    assert len(labels.unique()) > 1  # the comparison covers class boundaries
    with torch.inference_mode():  # the plain module's own forward, as the original's test.py
        own = plain({"img_data": image[0]}, segSize=seg_size)[0].argmax(0)
    assert torch.equal(predict_labels(plain, image, seg_size, CPU), own)


@pytest.mark.parametrize("options,scales", [
    (PredictOptions(), [(45, 61)]),  # the fast module's single-scale shortcut
    (PredictOptions(flip=True), [(45, 61)]),
    (PredictOptions(), [(33, 47), (45, 61)]),
    (PredictOptions(window=(24, 16)), [(45, 61)]),
])
def test_labels_with_confidence_are_predict_labels_and_the_probability_of_each(options, scales):
    """The app's call: the labels test.py would write, bit for bit, and each pixel's
    probability of its label under predict_probs (within float rounding on the banded path).
    Both kinds of module: the plain one (full-size probabilities) and one that takes the
    banded tail (scores at 1/4 of the input size)."""
    from mit_semseg.inference.banded_tail import LogitsSegmenter

    plain = TinySeg(3).eval()
    fast = LogitsSegmenter(lambda x: F.avg_pool2d(plain.conv(x), 4))
    seg_size = (52, 70)
    images = [torch.randn(1, 3, *size) for size in scales]
    for module in (plain, fast):
        labels, confidence = predict_labels_and_confidence(module, images, seg_size, CPU,
                                                           options)
        assert torch.equal(labels, predict_labels(module, images, seg_size, CPU, options))
        assert confidence.shape == seg_size and confidence.dtype == torch.float32
        probs = predict_probs(module, images, seg_size, CPU, options)
        torch.testing.assert_close(confidence, probs.gather(0, labels[None])[0],
                                   rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(confidence, probs.max(0).values, rtol=1e-5, atol=1e-6)
        assert len(labels.unique()) > 2 and confidence.min() < 0.6


def test_window_from_follows_the_test_window_keys():
    assert window_from(0) is None and window_from(-1, 5) is None
    assert window_from(600) == (600, 400)  # stride 0: two thirds of the size
    assert window_from(600, 300) == (600, 300)
    assert PredictOptions(window=window_from(90)).window_size_stride() == (90, 60)
