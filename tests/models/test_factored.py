import copy
import functools
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from model_helpers import randomise_batchnorm
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mit_semseg.inference.fast_path import CONV_PLANS, optimize_for_inference
from mit_semseg.inference.predict import PredictOptions, predict_probs
from mit_semseg.models import (
    build_decoder,
    build_segmentation_model,
)
from mit_semseg.models.decoders.factored import (
    FactoredPPMDecoder,
    FactoredUPerNetDecoder,
    UpsampledConv3x3,
    factor_decoders,
)
from mit_semseg.nn import SynchronizedBatchNorm2d, UserScatteredDataParallel, winograd

from . import _factored_dist_worker
from .factored_training import (
    IMAGE,
    NUM_CLASS,
    TOLERANCE,
    assert_equal_to_scale,
    compare_training,
    make_batches,
    make_forms,
    sgd_steps,
)

CPU = torch.device("cpu")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("small,size", [((3, 4), (11, 13)), ((1, 1), (5, 7)),
                                        ((6, 6), (2, 3)), ((9, 10), (9, 10))])
def test_upsampled_conv_equals_the_convolution_of_the_upsampled_maps(small, size):
    torch.manual_seed(0)
    weights = [torch.randn(5, 4, 3, 3, dtype=torch.float64),
               torch.randn(5, 2, 3, 3, dtype=torch.float64)]
    maps = [torch.randn(2, 4, *small, dtype=torch.float64),
            torch.randn(2, 2, small[1], small[0], dtype=torch.float64)]
    expected = sum(F.conv2d(F.interpolate(x, size=size, mode="bilinear", align_corners=False),
                            w, padding=1) for x, w in zip(maps, weights))
    got = UpsampledConv3x3(weights)(maps, size)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_upsampled_conv_rejects_a_kernel_that_is_not_3x3():
    with pytest.raises(ValueError, match=r"\(out=5, in, 3, 3\)"):
        UpsampledConv3x3([torch.randn(5, 4, 3, 3), torch.randn(5, 4, 1, 1)])


def _factored_against_plain(encoder, decoder, size, expected_type):
    torch.manual_seed(0)
    module = build_segmentation_model(encoder, decoder, NUM_CLASS).eval().double()
    randomise_batchnorm(module)
    x = torch.randn(1, 3, *size, dtype=torch.float64)
    with torch.inference_mode():
        maps = module.encoder(x, return_feature_maps=True)
        expected = module.decoder(maps)
        assert factor_decoders(module) == 1
        got = module.decoder(maps)
    assert isinstance(module.decoder, expected_type)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("size", [(72, 88), (41, 97), (9, 17)])
def test_factored_ppm_gives_the_same_logits(size):
    # 9x17 gives a 2x3 map: smaller than the 3x3 and 6x6 branches (upsampling shrinks them)
    _factored_against_plain("resnet18dilated", "ppm_deepsup", size, FactoredPPMDecoder)


@pytest.mark.parametrize("encoder,decoder,size", [
    ("resnet18", "upernet", (72, 88)),
    ("resnet18", "upernet_deepsup", (45, 99)),  # odd sizes: every level rounds differently
    ("mobilenetv2dilated", "upernet_lite", (64, 40)),
])
def test_factored_upernet_gives_the_same_logits(encoder, decoder, size):
    _factored_against_plain(encoder, decoder, size, FactoredUPerNetDecoder)


def _flops(module, x):
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        module(x)
    return counter.get_total_flops()


def test_factored_upernet_skips_most_of_the_fusion_convolution():
    module = build_segmentation_model("resnet18", "upernet", NUM_CLASS).eval()
    maps = module.encoder(torch.randn(1, 3, 128, 128), return_feature_maps=True)
    fusion = module.decoder.conv_last[0][0]
    # the fusion convolution at the finest map's size, 3x3 over 4 x 512 channels
    fusion_flops = 2 * 9 * fusion.in_channels * fusion.out_channels * maps[0].shape[-2:].numel()
    plain = _flops(module.decoder, maps)
    factor_decoders(module)
    factored = _flops(module.decoder, maps)
    # a quarter of the fusion convolution stays, the closed form of the rest costs a little
    assert plain - factored > 0.6 * fusion_flops


def test_fast_inference_of_upernet_keeps_the_probabilities():
    torch.manual_seed(0)
    plain = build_segmentation_model("resnet18", "upernet_deepsup", NUM_CLASS).eval()
    randomise_batchnorm(plain)
    fast = optimize_for_inference(copy.deepcopy(plain), CPU, plan=CONV_PLANS[-1])
    assert isinstance(fast.decoder, FactoredUPerNetDecoder)
    imgs = [torch.randn(1, 3, 56, 72), torch.randn(1, 3, 80, 104)]
    expected = predict_probs(plain, imgs, (61, 77), CPU)
    got = predict_probs(fast, imgs, (61, 77), CPU)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("decoder", ["ppm", "upernet"])
def test_factored_heads_run_under_bf16_autocast(decoder):
    torch.manual_seed(0)
    module = build_segmentation_model("resnet18dilated", decoder, NUM_CLASS).eval()
    imgs = [torch.randn(1, 3, 40, 56)]
    exact = predict_probs(module, imgs, (41, 57), CPU)
    factor_decoders(module)
    approx = predict_probs(module, imgs, (41, 57), CPU, PredictOptions(amp="bf16"))
    assert 0 < (approx - exact).abs().max() < 0.05


# ----------------------------------------------------------------------------- training form
# the encoders of the brief's released models (dilated ResNet, MobileNetV2, HRNetV2) and the
# non-dilated ResNet of the released UPerNets (its FPN maps are upsampled 2x, 4x and 8x); the
# first two run by default, the others with -m slow
TRAIN_CASES = [("resnet18dilated", "ppm_deepsup"), ("resnet18", "upernet_lite"),
               *(pytest.param(*case, marks=pytest.mark.slow) for case in [
                   ("mobilenetv2dilated", "ppm_deepsup"), ("hrnetv2", "ppm_deepsup"),
                   ("resnet18dilated", "upernet"), ("mobilenetv2dilated", "upernet_lite"),
                   ("resnet18", "upernet_deepsup")])]


@pytest.mark.parametrize("encoder,decoder", TRAIN_CASES)
def test_factored_training_equals_the_plain_form_in_float64(encoder, decoder):
    plain, factored = make_forms(encoder, decoder)
    initial, final = compare_training(plain, factored, make_batches(plain, 3, torch.float64),
                                      torch.float64)
    # control: the steps moved the weights far more than the tolerance
    assert max((final[key] - initial[key]).abs().max().item() for key in final) > 1e-3


@pytest.mark.parametrize("encoder,decoder", TRAIN_CASES)
def test_factored_training_step_equals_the_plain_one_in_float32(encoder, decoder):
    plain, factored = make_forms(encoder, decoder, torch.float32)
    compare_training(plain, factored, make_batches(plain, 1, torch.float32), torch.float32)


@pytest.mark.slow
def test_upernet_on_a_single_map_encoder_trains_exactly_as_the_plain_form():
    # HRNetV2 gives UPerNet one map: no coarser FPN map, nothing to factor, so the factored
    # form must be the plain computation itself (compare_training's control, "the forms
    # summed in another order", cannot hold here)
    plain, factored = make_forms("hrnetv2", "upernet_deepsup", torch.float32)
    batches = make_batches(plain, 2, torch.float32)
    losses_p, grads_p, state_p = sgd_steps(plain, batches)
    losses_f, grads_f, state_f = sgd_steps(factored, batches)
    assert torch.equal(losses_f, losses_p)
    assert grads_f.keys() == grads_p.keys()
    assert all(torch.equal(grads_f[name], grads_p[name]) for name in grads_p)
    assert all(torch.equal(state_f[key], state_p[key]) for key in state_p)


@pytest.mark.slow
@pytest.mark.parametrize("decoder", ["ppm_deepsup", "upernet_deepsup"])
def test_factored_training_of_a_whole_model_equals_the_plain_form(decoder):
    # the real encoder and the recipe's deep supervision; float64, 2 SGD steps
    plain, factored = make_forms("resnet18dilated", decoder, stand_in=False)
    compare_training(plain, factored, make_batches(plain, 2, torch.float64), torch.float64)


def _without_dropout(module):
    # replicas run in threads, which would draw the dropout masks in either order
    for m in module.modules():
        if isinstance(m, nn.Dropout2d):
            m.p = 0.0
    return module


@pytest.mark.slow
@pytest.mark.parametrize("decoder", ["ppm_deepsup", "upernet_lite"])
def test_factored_training_with_syncbn_over_two_cpu_replicas(decoder):
    encoder = "resnet18dilated" if decoder.startswith("ppm") else "resnet18"
    plain, factored = (_without_dropout(m) for m in make_forms(
        encoder, decoder, norm_layer=functools.partial(SynchronizedBatchNorm2d, eps_mode="plus")))
    compare_training(plain, factored, make_batches(plain, 3, torch.float64, devices=2),
                     torch.float64,
                     wrap=lambda m: UserScatteredDataParallel(m, num_cpu_replicas=2))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_factored_training_under_ddp_with_synced_batchnorm():
    """Two gloo processes, as torchrun runs train.py (DDP, DistributedSyncBatchNorm)."""
    mp.spawn(_factored_dist_worker.run_checks, args=(2, _free_port()), nprocs=2, join=True)


# Heads as wide as ResNet-50's, on maps large enough for the Winograd form
# (mit_semseg.nn.winograd.winograd_pays): decoder, encoder widths, map sizes (finest first),
# the 3x3 convolutions of one training forward that take that form.
WIDE_HEADS = [
    # PPM fusion's conv5 part (2048 -> 512) and the deep-supervision head (1024 -> 512)
    ("ppm_deepsup", [1024, 2048], [(16, 18), (16, 18)], 2),
    # UPerNet fusion's finest part and the FPN output convolutions at 32x32 and 16x16
    # (512 -> 512); the 8x8 one and the pyramid pooling's at 4x4 are too small
    ("upernet", [256, 512, 1024, 2048], [(32, 32), (16, 16), (8, 8), (4, 4)], 3),
]


@pytest.mark.parametrize("decoder,widths,sizes,winograd_convs", WIDE_HEADS)
def test_wide_heads_train_in_winograd_form_as_the_plain_form(decoder, widths, sizes,
                                                             winograd_convs, monkeypatch):
    torch.manual_seed(0)
    plain = randomise_batchnorm(build_decoder(decoder, NUM_CLASS, in_channels=widths))
    plain.factored_training = False
    factored = copy.deepcopy(plain)
    factored.factored_training = True
    maps = [torch.randn(2, width, *size) for width, size in zip(widths, sizes)]
    calls = []
    real = winograd.winograd_conv3x3
    monkeypatch.setattr(winograd, "winograd_conv3x3",
                        lambda *args: calls.append(tuple(args[1].shape)) or real(*args))

    def forward_backward(head, dtype=torch.float32):
        inputs = [m.to(dtype, copy=True).requires_grad_() for m in maps]
        torch.manual_seed(1)  # the same dropout masks
        outputs = {"logits": head(inputs)}
        if head.deep_sup:
            outputs["aux logits"] = head.aux_logits(inputs)
        loss = sum((out * torch.linspace(-1, 1, out.numel(), dtype=dtype).reshape(out.shape)
                    ).sum() for out in outputs.values())
        loss.backward()
        results = {f"gradient of map {i}": m.grad for i, m in enumerate(inputs)}
        results.update({f"gradient of {name}": p.grad for name, p in head.named_parameters()
                        if p.grad is not None})
        results.update(outputs)
        return {name: value.detach().double() for name, value in results.items()}

    # float32: the policy routes exactly the wide convolutions to the Winograd form
    forward_backward(plain)
    assert calls == []
    forward_backward(factored)
    assert len(calls) == winograd_convs
    # float64, with the form forced wherever the factored head offers it: the same function
    # (float32 comparisons would fail now and then for a reason that is not the form's: after
    # BatchNorm in training mode, rounding can move a ReLU input across zero, which changes
    # that gradient by its whole size; the form's float32 rounding is tests/nn/test_winograd.py's)
    monkeypatch.setattr(winograd, "winograd_pays", lambda x, weight: True)
    calls.clear()
    exact = forward_backward(copy.deepcopy(plain).double(), torch.float64)
    got = forward_backward(copy.deepcopy(factored).double(), torch.float64)
    assert len(calls) >= winograd_convs
    assert_equal_to_scale(got, exact, TOLERANCE[torch.float64], "")


def test_training_step_skips_the_upsampled_part_of_the_fusion_convolution():
    plain, factored = make_forms("resnet18", "upernet_lite", torch.float32)
    batch = make_batches(plain, 1, torch.float32)[0]

    def step_flops(module):
        with FlopCounterMode(display=False) as counter:
            module(batch)[0].backward()
        return counter.get_total_flops()

    fusion = plain.decoder.conv_last[0][0]
    finest = plain.encoder.maps[0]
    upsampled_inputs = fusion.in_channels - fusion.in_channels // 4
    # forward, gradient of the input and of the weight: three times the convolution
    skipped = 3 * 2 * 9 * upsampled_inputs * fusion.out_channels * finest[:, :1].numel()
    saved = step_flops(plain) - step_flops(factored)
    assert 0.8 * skipped < saved < skipped


def test_models_train_factored_by_default():
    for module in (build_segmentation_model("resnet18dilated", "ppm", NUM_CLASS),
                   build_segmentation_model("resnet18", "upernet", NUM_CLASS),
                   build_decoder("ppm_deepsup", NUM_CLASS, fc_dim=64)):
        decoder = getattr(module, "decoder", module)
        assert decoder.factored_training
    plain = build_segmentation_model("resnet18", "upernet", NUM_CLASS, factored_heads=False)
    assert not plain.decoder.factored_training
    # a decoder without a factored form ignores the switch
    c1 = build_segmentation_model("resnet18", "c1", NUM_CLASS, factored_heads=False)
    assert not hasattr(c1.decoder, "factored_training")


def test_state_dict_is_the_same_in_both_forms():
    plain, factored = make_forms("resnet18dilated", "ppm_deepsup", torch.float32)
    assert list(plain.state_dict()) == list(factored.state_dict())
    # a model trained either way loads into the other strictly
    plain.load_state_dict(factored.state_dict(), strict=True)


@pytest.mark.parametrize("decoder", ["ppm_deepsup", "upernet_lite"])
def test_inference_keeps_the_plain_arithmetic(decoder):
    # eval mode without autograd is the original's computation, bit for bit
    plain, factored = make_forms("resnet18", decoder, torch.float32)
    images = torch.randn(1, 3, *IMAGE)
    with torch.no_grad():
        expected = plain.eval()({"img_data": images}, segSize=IMAGE)
        assert torch.equal(factored.eval()({"img_data": images}, segSize=IMAGE), expected)
    # with autograd recording (TRAIN.fix_bn trains in eval mode), the factored form runs
    assert factored.decoder.training is False and torch.is_grad_enabled()
    with_grad = factored({"img_data": images}, segSize=IMAGE)
    assert not torch.equal(with_grad, expected)
    torch.testing.assert_close(with_grad, expected, rtol=0, atol=1e-5)
