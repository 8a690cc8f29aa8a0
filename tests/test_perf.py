import pytest
import torch

from mit_semseg.inference import predict_probs
from mit_semseg.models import build_segmentation_model
from mit_semseg.perf import compile_module, to_channels_last

CPU = torch.device("cpu")
NUM_CLASS = 7


@pytest.fixture
def model():
    module = build_segmentation_model("resnet18dilated", "c1_deepsup", NUM_CLASS).eval()
    # non-trivial eval statistics, so that BatchNorm really takes part in the comparison
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return module


def test_channels_last_converts_conv_weights_and_keeps_the_state_dict(model):
    keys = {k: v.shape for k, v in model.state_dict().items()}
    to_channels_last(model)
    assert {k: v.shape for k, v in model.state_dict().items()} == keys
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last)
                         and not m.weight.is_contiguous() for m in convs if m.kernel_size != (1, 1)
                         or m.in_channels > 1)


def test_channels_last_inference_equals_default_layout(model):
    imgs = [torch.randn(1, 3, 40, 56), torch.randn(1, 3, 48, 64)]
    expected = predict_probs(model, imgs, (45, 61), CPU)
    got = predict_probs(to_channels_last(model), imgs, (45, 61), CPU)
    assert got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert torch.equal(got.argmax(0), expected.argmax(0))


def test_channels_last_training_step_equals_default_layout(model):
    batch = {"img_data": torch.randn(2, 3, 64, 64),
             "seg_label": torch.randint(-1, NUM_CLASS, (2, 8, 8))}
    reference = build_segmentation_model("resnet18dilated", "c1_deepsup", NUM_CLASS)
    reference.load_state_dict(model.state_dict())
    losses, grads = [], []
    for module in (reference.train(), to_channels_last(model).train()):
        loss, _ = module(batch)
        loss.backward()
        losses.append(loss.detach())
        grads.append(module.encoder.conv1.weight.grad.contiguous())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-5)


def test_bf16_autocast_inference_is_close_and_summed_in_fp32(model):
    imgs = [torch.randn(1, 3, 32, 40), torch.randn(1, 3, 40, 48)]
    exact = predict_probs(model, imgs, (33, 41), CPU)
    approx = predict_probs(model, imgs, (33, 41), CPU, amp="bf16")
    assert approx.dtype == torch.float32
    torch.testing.assert_close(approx.sum(0), torch.ones(33, 41))
    assert 0 < (approx - exact).abs().max() < 0.05


def test_unknown_or_unsupported_amp_is_refused(model):
    imgs = [torch.randn(1, 3, 16, 16)]
    with pytest.raises(ValueError, match="amp must be one of"):
        predict_probs(model, imgs, (16, 16), CPU, amp="int8")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        predict_probs(model, imgs, (16, 16), CPU, amp="fp16")


@pytest.mark.slow
def test_compiled_module_gives_the_same_probabilities(model):
    imgs = [torch.randn(1, 3, 32, 40), torch.randn(1, 3, 40, 48)]
    expected = predict_probs(model, imgs, (33, 41), CPU)
    got = predict_probs(compile_module(model), imgs, (33, 41), CPU)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
