import copy

import pytest
import torch
import torch.nn.functional as F
from model_helpers import randomise_batchnorm
from torch.nn.modules.batchnorm import _BatchNorm

from mit_semseg.inference import banded_tail
from mit_semseg.inference.fast_path import (
    CONV_PLANS,
    DEFAULT_CONV_PLAN,
    ConvPlan,
    LogitsNetwork,
    PointwiseConv2d,
    apply_conv_plan,
    compile_module,
    fold_batchnorm,
    optimize_for_inference,
    to_channels_last,
)
from mit_semseg.inference.predict import PredictOptions, predict_probs
from mit_semseg.models import DECODERS, ENCODERS, build_segmentation_model
from mit_semseg.models.segmentation_module import softmax_over_classes

CPU = torch.device("cpu")
NUM_CLASS = 7


def test_channels_last_converts_conv_weights_and_keeps_the_state_dict(model):
    keys = {k: v.shape for k, v in model.state_dict().items()}
    to_channels_last(model)
    assert {k: v.shape for k, v in model.state_dict().items()} == keys
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last)
                         for m in convs)
    # (1x1 kernels are contiguous in both layouts)
    assert all(not m.weight.is_contiguous() for m in convs if m.kernel_size != (1, 1))


def test_channels_last_inference_equals_default_layout(model):
    imgs = [torch.randn(1, 3, 40, 56), torch.randn(1, 3, 48, 64)]
    expected = predict_probs(model, imgs, (45, 61), CPU)
    got = predict_probs(to_channels_last(model), imgs, (45, 61), CPU)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert torch.equal(got.argmax(0), expected.argmax(0))


def test_channels_last_training_step_equals_default_layout(model):
    # float64: in float32 the two layouts' rounding differences grow to ~1% in the first
    # layer's gradient through 20 batch-statistics BatchNorms, which would hide real errors
    batch = {"img_data": torch.randn(2, 3, 64, 64, dtype=torch.float64),
             "seg_label": torch.randint(-1, NUM_CLASS, (2, 8, 8))}
    reference = build_segmentation_model("resnet18dilated", "c1_deepsup", NUM_CLASS).double()
    reference.load_state_dict(model.state_dict())
    losses, grads = [], []
    for module in (reference.train(), to_channels_last(model.double()).train()):
        loss, _ = module(batch)
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.contiguous() for p in module.parameters() if p.grad is not None])
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-12, atol=1e-12)
    assert len(grads[0]) == len(grads[1]) > 60
    for got, expected in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)


def test_bf16_autocast_inference_is_close_and_summed_in_fp32(model):
    imgs = [torch.randn(1, 3, 32, 40), torch.randn(1, 3, 40, 48)]
    exact = predict_probs(model, imgs, (33, 41), CPU)
    approx = predict_probs(model, imgs, (33, 41), CPU, PredictOptions(amp="bf16"))
    assert approx.dtype == torch.float32
    torch.testing.assert_close(approx.sum(0), torch.ones(33, 41))
    assert 0 < (approx - exact).abs().max() < 0.05


def test_unknown_or_unsupported_amp_is_refused(model):
    imgs = [torch.randn(1, 3, 16, 16)]
    with pytest.raises(ValueError, match="amp must be one of"):
        predict_probs(model, imgs, (16, 16), CPU, PredictOptions(amp="int8"))
    with pytest.raises(ValueError, match="needs a CUDA device"):
        predict_probs(model, imgs, (16, 16), CPU, PredictOptions(amp="fp16"))


def _check_folding(encoder, decoder, fc_dim=None):
    torch.manual_seed(0)
    # float64, so that the comparison tests the folding arithmetic, not float32 rounding
    # amplified through 100 random layers
    module = build_segmentation_model(encoder, decoder, NUM_CLASS, fc_dim=fc_dim).eval().double()
    randomise_batchnorm(module)
    x = torch.randn(1, 3, 72, 88, dtype=torch.float64)
    with torch.inference_mode():
        expected = module({"img_data": x}, segSize=(75, 90))
    folded = copy.deepcopy(module)
    image = torch.zeros(1, 3, 64, 64, dtype=torch.float64)
    count = fold_batchnorm(folded, lambda: folded({"img_data": image}, segSize=(64, 64)))
    with torch.inference_mode():
        got = folded({"img_data": x}, segSize=(75, 90))
    # Every BatchNorm on the inference path is gone; only deep-supervision ones remain.
    left = [n for n, m in folded.named_modules() if isinstance(m, _BatchNorm)]
    assert count > 0 and all("deepsup" in n for n in left), left
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("encoder", [n for n in ENCODERS.names() if not n.endswith("16")])
def test_folding_batchnorm_keeps_every_encoders_output(encoder):
    _check_folding(encoder, "c1")


@pytest.mark.parametrize("decoder", DECODERS.names())
def test_folding_batchnorm_keeps_every_decoders_output(decoder):
    _check_folding("resnet18dilated", decoder)


def test_folding_needs_eval_mode(model):
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(model.train(), lambda: None)


def test_folding_leaves_a_batchnorm_after_a_non_convolution_alone():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
                              torch.nn.BatchNorm2d(4)).eval()
    randomise_batchnorm(net)
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        expected = net(x)
    assert fold_batchnorm(net, lambda: net(x)) == 0
    assert isinstance(net[2], torch.nn.BatchNorm2d)
    with torch.no_grad():
        assert torch.equal(net(x), expected)


def test_optimized_module_predicts_the_same(model):
    imgs = [torch.randn(1, 3, 40, 56), torch.randn(1, 3, 48, 64), torch.randn(1, 3, 56, 72)]
    expected = predict_probs(model, imgs, (45, 61), CPU)
    fast = optimize_for_inference(copy.deepcopy(model), CPU, plan=CONV_PLANS[3])
    assert not any(isinstance(m, _BatchNorm) and "deepsup" not in n
                   for n, m in fast.named_modules())
    got = predict_probs(fast, imgs, (45, 61), CPU)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert torch.equal(got.argmax(0), expected.argmax(0))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_softmax_over_classes_equals_softmax_in_either_layout(layout):
    x = torch.randn(2, 150, 13, 17).contiguous(memory_format=layout)
    got = softmax_over_classes(x)
    torch.testing.assert_close(got, F.softmax(x.contiguous(), dim=1), rtol=0, atol=1e-6)
    assert got.is_contiguous(memory_format=layout)


@pytest.mark.slow
@pytest.mark.parametrize("freezing", [False, True])
def test_compiled_module_gives_the_same_probabilities(model, freezing):
    imgs = [torch.randn(1, 3, 32, 40), torch.randn(1, 3, 40, 48)]
    expected = predict_probs(model, imgs, (33, 41), CPU)
    compiled = compile_module(LogitsNetwork(model.encoder, model.decoder), freezing=freezing)
    got = predict_probs(banded_tail.LogitsSegmenter(compiled), imgs, (33, 41), CPU)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("decoder", ["c1_deepsup", "ppm_deepsup"])
@pytest.mark.parametrize("plan", [ConvPlan(False, "onednn"), ConvPlan(True, "gemm")], ids=str)
def test_compiled_fast_path_compiles_once_for_all_input_sizes(decoder, plan):
    # the fast path's explicit 1x1 kernels and a PPM head's adaptive pooling once made
    # torch.compile fail, or recompile at every new image size (over a minute per image)
    module = build_segmentation_model("resnet18dilated", decoder, NUM_CLASS, fc_dim=512).eval()
    randomise_batchnorm(module)
    optimize_for_inference(module, CPU, plan=plan)
    compiled = compile_module(LogitsNetwork(module.encoder, module.decoder), freezing=True)
    # large enough that PyTorch's own small-map convolution rule (a guard) never switches
    sizes = [(112, 128), (128, 120), (136, 152)]
    torch._dynamo.reset()  # forget other tests' graphs: they would count as recompilations
    with torch.inference_mode():
        compiled(torch.randn(1, 3, *sizes[0]))
        with torch._dynamo.config.patch(error_on_recompile=True):
            for size in sizes[1:]:
                x = torch.randn(1, 3, *size)
                torch.testing.assert_close(compiled(x), module.decoder(module.encoder(x)),
                                           rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------- convolution plans
@pytest.mark.parametrize("plan", CONV_PLANS, ids=str)
@pytest.mark.parametrize("batch,stride", [(1, 1), (3, 1), (1, 2)])
def test_pointwise_kernels_equal_the_convolution(plan, batch, stride):
    conv = torch.nn.Conv2d(24, 40, 1, stride=stride)
    x = torch.randn(batch, 24, 11, 13)
    with torch.no_grad():
        expected = conv(x)
        apply_conv_plan(conv, plan)
        assert isinstance(conv, PointwiseConv2d) and conv.kernel == plan.pointwise
        layout = torch.channels_last if plan.channels_last else torch.contiguous_format
        got = conv(x.contiguous(memory_format=layout))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got.is_contiguous(memory_format=layout)
    # training still runs the ordinary convolution, with gradients
    conv(x).sum().backward()
    assert conv.weight.grad is not None


def _slow_fallback_calls(module, x):
    from torch.profiler import ProfilerActivity, profile

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # PyTorch sends batch-1 1x1 convolutions to the fallback here
    try:
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU],
                                             record_shapes=True) as prof:
            module({"img_data": x}, segSize=x.shape[2:])
    finally:
        torch.set_num_threads(threads)
    # (on maps this small PyTorch also runs 3x3 convolutions natively; only 1x1 ones count)
    return sum(e.count for e in prof.key_averages(group_by_input_shape=True)
               if e.key == "aten::_slow_conv2d_forward" and e.input_shapes[1][2:] == [1, 1])


@pytest.mark.parametrize("plan", CONV_PLANS, ids=str)
def test_no_convolution_takes_the_slow_fallback_at_one_thread(model, plan):
    x = torch.randn(1, 3, 64, 64)
    assert _slow_fallback_calls(model, x) > 0  # the plain model does (the test can fail)
    fast = optimize_for_inference(copy.deepcopy(model), CPU, plan=plan)
    assert _slow_fallback_calls(fast, x) == 0


def test_default_plan_is_fixed_and_times_nothing(model, monkeypatch):
    # the plan once came from timing every candidate at start-up (1-20 s, and a busy machine
    # could make it pick a slower one); now no clock is read while preparing the module
    def no_clock():
        raise AssertionError("optimize_for_inference read a clock")

    monkeypatch.setattr("time.perf_counter", no_clock)
    fast = optimize_for_inference(copy.deepcopy(model), CPU)
    monkeypatch.undo()
    assert DEFAULT_CONV_PLAN == ConvPlan(channels_last=True, pointwise="onednn")
    convs = [m for m in fast.modules() if isinstance(m, PointwiseConv2d)]
    assert convs and all(m.kernel == "onednn" for m in convs)
    three = [m for m in fast.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1]
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in three)


def test_torch_kernel_is_the_ordinary_convolution():
    conv = torch.nn.Conv2d(24, 40, 1)
    x = torch.randn(1, 24, 11, 13)
    with torch.no_grad():
        expected = conv(x)
        apply_conv_plan(conv, ConvPlan(False, "torch"))
        assert torch.equal(conv(x), expected)


def test_unknown_pointwise_kernel_is_refused():
    with pytest.raises(ValueError, match="pointwise kernel must be one of"):
        ConvPlan(True, "winograd")
