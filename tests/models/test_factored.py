import copy

import pytest
import torch
import torch.nn.functional as F
from model_helpers import randomise_batchnorm
from torch.utils.flop_counter import FlopCounterMode

from mit_semseg.inference.fast_path import CONV_PLANS, optimize_for_inference
from mit_semseg.inference.predict import PredictOptions, predict_probs
from mit_semseg.models import build_segmentation_model
from mit_semseg.models.decoders.factored import (
    FactoredPPMDecoder,
    FactoredUPerNetDecoder,
    UpsampledConv3x3,
    factor_decoders,
)

CPU = torch.device("cpu")
NUM_CLASS = 7


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
