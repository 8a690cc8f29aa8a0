import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mit_semseg.engine.inference import (
    TrainedModel,
    collect_images,
    load_segmentation_module,
    output_names,
    predict_probs,
    sliding_window_starts,
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
    flipped = predict_probs(model, [x], (10, 14), CPU, flip=True)
    torch.testing.assert_close(flipped, plain)
    assert model.calls == [(10, 14)] * 3


def test_flip_averages_flipped_back_prediction():
    model = TinySeg(3).eval()
    torch.nn.init.normal_(model.conv.weight)  # clearly asymmetric kernel
    x = torch.randn(1, 3, 10, 14)
    out = predict_probs(model, [x], (10, 14), CPU, flip=True)
    expected = (_direct(model, x, (10, 14)) + _direct(model, x.flip(-1), (10, 14)).flip(-1)) / 2
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, _direct(model, x, (10, 14)), atol=1e-4)


@pytest.mark.parametrize("window", [8, (8, 5), (7, 7), (16, 3)])
def test_sliding_window_equals_full_image_for_pixelwise_model(window):
    model = TinySeg(1).eval()
    x = torch.randn(1, 3, 19, 26)
    full = predict_probs(model, [x], (19, 26), CPU)
    tiled = predict_probs(model, [x], (19, 26), CPU, window=window)
    torch.testing.assert_close(tiled, full)
    size = window if isinstance(window, int) else window[0]
    assert max(max(c) for c in model.calls[1:]) <= size
    assert len(model.calls) > 2  # really tiled


def test_sliding_window_resizes_to_seg_size():
    model = TinySeg(1, softmax_first=True).eval()
    xs = [torch.randn(1, 3, 19, 26), torch.randn(1, 3, 9, 13)]
    full = predict_probs(model, xs, (30, 40), CPU, flip=True)
    tiled = predict_probs(model, xs, (30, 40), CPU, flip=True, window=(8, 6))
    torch.testing.assert_close(tiled, full)


def test_small_input_skips_windowing():
    model = TinySeg(1).eval()
    predict_probs(model, [torch.randn(1, 3, 6, 6)], (6, 6), CPU, window=8)
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
        predict_probs(model, [torch.randn(1, 3, 20, 20)], (20, 20), CPU, window=(8, 9))
    with pytest.raises(ValueError, match="empty"):
        predict_probs(model, [], (20, 20), CPU)


def test_load_missing_checkpoint_names_files(tmp_path):
    (tmp_path / "encoder_epoch_3.pth").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="decoder_epoch_3.pth") as info:
        load_segmentation_module(
            TrainedModel("resnet18dilated", "c1", NUM_CLASS, tmp_path, "epoch_3.pth"), CPU)
    assert "encoder_epoch_3.pth" not in str(info.value)


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def test_collect_images_reports_bad_arguments_and_keeps_going(tmp_path):
    img = np.zeros((2, 2, 3), np.uint8)
    a = _write(tmp_path / "set" / "a.JPG", img)
    b = _write(tmp_path / "set" / "sub" / "b.png", img)
    c = _write(tmp_path / "c.bmp", img)
    (tmp_path / "list.txt").write_text(f"{c}\n{a}\n")
    (tmp_path / "empty").mkdir()
    images, problems = collect_images(
        [tmp_path / "set", tmp_path / "empty", tmp_path / "nope.jpg", tmp_path / "list.txt"]
    )
    assert images == [a, b, c]  # a listed twice, kept once
    assert len(problems) == 2
    assert "empty" in problems[0]
    assert "nope.jpg" in problems[1] and "no such file" in problems[1]


def test_output_names_unique_and_readable(tmp_path):
    paths = [
        tmp_path / "x" / "img.jpg",
        tmp_path / "y" / "img.jpg",
        tmp_path / "y" / "other.png",
        tmp_path / "y" / "dup.jpg",
        tmp_path / "y" / "dup.png",
    ]
    names = output_names(paths)
    assert names == ["x__img", "y__img", "y__other", "y__dup_jpg", "y__dup_png"]
    assert output_names([tmp_path / "one" / "pic.jpeg"]) == ["pic"]
    assert output_names([tmp_path / "f" / "a.jpg", tmp_path / "f" / "b.jpg"]) == ["a", "b"]


def test_load_segmentation_module_narrow_encoder_with_upernet(tmp_path):
    from mit_semseg.models import build_segmentation_model

    trained = build_segmentation_model("resnet18dilated", "upernet", NUM_CLASS)
    torch.save(trained.encoder.state_dict(), tmp_path / "encoder_epoch_1.pth")
    torch.save(trained.decoder.state_dict(), tmp_path / "decoder_epoch_1.pth")
    model = TrainedModel("resnet18dilated", "upernet", NUM_CLASS, tmp_path, "epoch_1.pth",
                         fc_dim=512, fast_inference=False)
    loaded = load_segmentation_module(model, CPU)
    image = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        probs = loaded({"img_data": image}, segSize=(40, 56))
    assert probs.shape == (1, NUM_CLASS, 40, 56)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 40, 56))


def test_fast_inference_folds_batchnorm_and_predicts_the_same(tmp_path):
    from mit_semseg.models import build_segmentation_model

    trained = build_segmentation_model("resnet18dilated", "ppm_deepsup", NUM_CLASS)
    torch.save(trained.encoder.state_dict(), tmp_path / "encoder_epoch_1.pth")
    torch.save(trained.decoder.state_dict(), tmp_path / "decoder_epoch_1.pth")
    probs, modules = {}, {}
    image = [torch.randn(1, 3, 48, 64), torch.randn(1, 3, 64, 80)]
    for fast in (False, True):
        model = TrainedModel("resnet18dilated", "ppm_deepsup", NUM_CLASS, tmp_path,
                             "epoch_1.pth", fc_dim=512, fast_inference=fast)
        modules[fast] = load_segmentation_module(model, CPU)
        probs[fast] = predict_probs(modules[fast], image, (50, 70), CPU)
    assert not modules[True].training
    batchnorms = {fast: sum(isinstance(m, nn.BatchNorm2d) for m in modules[fast].modules())
                  for fast in (False, True)}
    assert batchnorms[True] == 0 < batchnorms[False]  # the deep-supervision head is dropped
    torch.testing.assert_close(probs[True], probs[False], rtol=0, atol=1e-5)


def _save_c1_weights(folder):
    from mit_semseg.models import build_segmentation_model

    trained = build_segmentation_model("resnet18dilated", "c1", NUM_CLASS)
    torch.save(trained.encoder.state_dict(), folder / "encoder_epoch_1.pth")
    torch.save(trained.decoder.state_dict(), folder / "decoder_epoch_1.pth")


def test_fast_inference_is_on_unless_switched_off(tmp_path):
    # the library default follows the config's MODEL.fast_inference (it once fell back to off)
    from mit_semseg.config import get_cfg_defaults

    _save_c1_weights(tmp_path)
    model = TrainedModel("resnet18dilated", "c1", NUM_CLASS, tmp_path, "epoch_1.pth")
    assert model.fast_inference is get_cfg_defaults().MODEL.fast_inference is True
    loaded = load_segmentation_module(model, CPU)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in loaded.modules())


def test_load_rejects_a_wrong_fc_dim(tmp_path):
    _save_c1_weights(tmp_path)
    model = TrainedModel("resnet18dilated", "c1", NUM_CLASS, tmp_path, "epoch_1.pth",
                         fc_dim=2048)
    with pytest.raises(ValueError, match="fc_dim=2048 .* 512"):
        load_segmentation_module(model, CPU)


@pytest.fixture(scope="module")
def varied_c1():
    """A plain and a fast-inference (BatchNorm folded, banded tail) MobileNetV2 + C1 with
    the same random weights and non-trivial BatchNorm statistics, so that labels vary."""
    import copy

    from mit_semseg.models import build_segmentation_model
    from mit_semseg.perf import CONV_PLANS, optimize_for_inference

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
    from mit_semseg.engine.score_maps import predict_labels

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
