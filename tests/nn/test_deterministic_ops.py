"""mit_semseg.nn.deterministic_ops: the matrix/gather forms equal torch's kernels (CPU, forced),
they are used only in deterministic CUDA training, and that training is reproducible (CUDA)."""

import pytest
import torch
import torch.nn.functional as F

from mit_semseg.nn import deterministic_ops as det


@pytest.fixture
def forced(monkeypatch):
    """Take the deterministic path on the CPU, as deterministic CUDA training would."""
    monkeypatch.setattr(det, "_deterministic_cuda", lambda x: True)


def _forward_backward(fn, x, grad):
    x = x.clone().requires_grad_(True)
    out = fn(x)
    out.backward(grad)
    return out.detach(), x.grad


def _assert_same_op(ours, reference, shape, out_shape, atol=1e-5):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    grad = torch.randn(out_shape, generator=gen, dtype=torch.float64)
    out, dx = _forward_backward(ours, x, grad)
    ref_out, ref_dx = _forward_backward(reference, x, grad)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=atol)
    torch.testing.assert_close(dx, ref_dx, rtol=0, atol=atol)


@pytest.mark.parametrize("size, out", [((7, 9), (16, 23)), ((6, 6), (48, 64)),
                                       ((13, 11), (5, 4)), ((1, 5), (3, 5)), ((8, 8), (8, 8))])
def test_bilinear_matrix_form_equals_interpolate(forced, size, out):
    shape = (2, 3, *size)
    _assert_same_op(
        lambda x: det.interpolate_bilinear(x, out),
        lambda x: F.interpolate(x, size=out, mode="bilinear", align_corners=False),
        shape, (2, 3, *out), atol=1e-12)


@pytest.mark.parametrize("size", [(6, 6), (7, 11), (13, 5), (2, 3)])
@pytest.mark.parametrize("scale", [1, 2, 3, 6])
def test_pooling_matrix_form_equals_adaptive_avg_pool(forced, size, scale):
    _assert_same_op(lambda x: det.AdaptiveAvgPool2d(scale)(x),
                    lambda x: F.adaptive_avg_pool2d(x, scale),
                    (2, 3, *size), (2, 3, scale, scale), atol=1e-12)


def test_gather_form_equals_nll_loss(forced):
    gen = torch.Generator().manual_seed(1)
    log_probs = torch.log_softmax(torch.randn(2, 5, 4, 6, generator=gen), 1)
    target = torch.randint(-1, 5, (2, 4, 6), generator=gen)
    ours, dx = _forward_backward(lambda x: det.NLLLoss(ignore_index=-1)(x, target),
                                 log_probs, torch.tensor(1.0))
    ref, ref_dx = _forward_backward(lambda x: F.nll_loss(x, target, ignore_index=-1),
                                    log_probs, torch.tensor(1.0))
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(dx, ref_dx, rtol=1e-6, atol=1e-9)
    all_ignored = torch.full_like(target, -1)
    assert torch.isnan(det.nll_loss(log_probs, all_ignored, -1))  # as F.nll_loss: 0 / 0
    assert torch.isnan(F.nll_loss(log_probs, all_ignored, ignore_index=-1))


def test_gather_form_equals_weighted_nll_loss(forced):
    gen = torch.Generator().manual_seed(2)
    log_probs = torch.log_softmax(torch.randn(2, 5, 4, 6, generator=gen, dtype=torch.float64), 1)
    target = torch.randint(-1, 5, (2, 4, 6), generator=gen)
    weight = torch.tensor([0.5, 2.0, 1.0, 0.0, 3.0], dtype=torch.float64)
    ours, dx = _forward_backward(lambda x: det.NLLLoss(-1, weight)(x, target), log_probs,
                                 torch.tensor(1.0, dtype=torch.float64))
    ref, ref_dx = _forward_backward(
        lambda x: F.nll_loss(x, target, weight=weight, ignore_index=-1), log_probs,
        torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(dx, ref_dx, rtol=0, atol=1e-12)
    # the weighted mean, written out: sum of w[t] * -log p[t] over sum of w[t]
    valid = target >= 0
    picked = log_probs.gather(1, target.clamp(min=0).unsqueeze(1)).squeeze(1)[valid]
    w = weight[target[valid]]
    assert float(ours) == pytest.approx(float(-(w * picked).sum() / w.sum()), abs=1e-12)


def test_usual_kernels_outside_deterministic_cuda_training(monkeypatch):
    """On the CPU, even with deterministic algorithms on, the results are torch's own."""
    x = torch.randn(1, 2, 5, 7, requires_grad=True)
    used = []
    monkeypatch.setattr(det, "_separable", lambda *a: used.append(1))
    torch.use_deterministic_algorithms(True)
    try:
        up = det.interpolate_bilinear(x, (9, 13))
        pooled = det.adaptive_avg_pool2d(x, 3)
    finally:
        torch.use_deterministic_algorithms(False)
    assert used == []
    assert torch.equal(up, F.interpolate(x, size=(9, 13), mode="bilinear", align_corners=False))
    assert torch.equal(pooled, F.adaptive_avg_pool2d(x, 3))


def test_models_use_the_deterministic_ops():
    from mit_semseg.models import build_segmentation_model

    module = build_segmentation_model("mobilenetv2dilated", "ppm_deepsup", 5)
    pools = [m for m in module.modules() if isinstance(m, torch.nn.AdaptiveAvgPool2d)]
    assert len(pools) == 4 and all(isinstance(m, det.AdaptiveAvgPool2d) for m in pools)
    assert isinstance(module.crit, det.NLLLoss) and module.crit.ignore_index == -1
    upernet = build_segmentation_model("resnet18", "upernet", 5, fc_dim=512)
    assert all(isinstance(m, det.AdaptiveAvgPool2d) for m in upernet.decoder.ppm_pooling)


@pytest.mark.cuda
@pytest.mark.parametrize("decoder", ["ppm_deepsup", "upernet"])
def test_deterministic_cuda_training_step_is_bitwise_reproducible_cuda(decoder, monkeypatch):
    from mit_semseg.engine.reproducibility import configure_determinism
    from mit_semseg.models import build_segmentation_model

    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    flags = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
             torch.backends.cuda.matmul.allow_tf32)
    configure_determinism(True)
    try:
        grads = []
        for _ in range(2):
            torch.manual_seed(0)
            module = build_segmentation_model("resnet18dilated", decoder, 7, fc_dim=512).cuda()
            gen = torch.Generator().manual_seed(1)
            images = torch.randn(2, 3, 64, 64, generator=gen).cuda()
            stride = 4 if decoder == "upernet" else 8
            labels = torch.randint(-1, 7, (2, 64 // stride, 64 // stride), generator=gen).cuda()
            loss, _ = module({"img_data": images, "seg_label": labels})
            loss.backward()
            grads.append([p.grad.clone() for p in module.parameters()])
        assert all(torch.equal(a, b) for a, b in zip(*grads))
    finally:
        torch.use_deterministic_algorithms(flags[0])
        (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
         torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) = flags[1:]
