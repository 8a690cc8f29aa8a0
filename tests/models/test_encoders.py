import math

import pytest
import torch
import torch.nn as nn

from mit_semseg.models import ENCODERS, build_encoder


def expected_size(size: int, stride: int) -> int:
    # Every strided layer (3x3 pad 1, max-pool 3/2 pad 1, 1x1 stride 2) maps n to ceil(n / 2).
    return math.ceil(size / stride)


@pytest.mark.parametrize("name", ENCODERS.names())
def test_declared_channels_and_strides_match_the_maps(name):
    encoder = build_encoder(name).eval()
    # Odd sizes exercise the rounding; the deep encoders get a smaller one to stay fast.
    h, w = (65, 97) if name.startswith(("resnet18", "mobilenet")) else (17, 25)
    with torch.no_grad():
        maps = encoder(torch.randn(1, 3, h, w))
    assert len(maps) == len(encoder.out_channels) == len(encoder.strides)
    for fmap, channels, stride in zip(maps, encoder.out_channels, encoder.strides):
        assert fmap.shape == (1, channels, expected_size(h, stride), expected_size(w, stride))


@pytest.mark.parametrize("name", ENCODERS.names())
def test_output_stride_follows_the_name(name):
    encoder = build_encoder(name)
    last = 16 if name.endswith("dilated16") else 8 if name.endswith("dilated") else 32
    assert encoder.strides[-1] == last
    assert encoder.strides[:2] == [4, 8]


def test_output_stride_argument_overrides_the_name():
    assert build_encoder("resnet18dilated", output_stride=16).strides == [4, 8, 16, 16]
    assert build_encoder("mobilenetv2dilated", output_stride=32).strides == [4, 8, 16, 32, 32]
    with pytest.raises(ValueError, match="output_stride"):
        build_encoder("resnet18", output_stride=4)


def test_feature_maps_match_the_original_recorded_shapes(upstream_reference):
    recorded = upstream_reference["encoder_feature_maps"]
    for name in ("resnet18", "resnet18dilated", "mobilenetv2dilated"):
        with torch.no_grad():
            maps = build_encoder(name).eval()(torch.randn(1, 3, 64, 96))
        assert [list(m.shape) for m in maps] == recorded[name]


def _dilations(encoder, names):
    modules = dict(encoder.named_modules())
    return [modules[n].dilation[0] for n in names], [modules[n].stride[0] for n in names]


def test_dilation_pattern_is_the_originals():
    # The original's surgery for dilate_scale 8 on ResNet-50 (upstream_spec.md 6.2).
    encoder = build_encoder("resnet50dilated")
    names = ["layer3.0.conv2", "layer3.1.conv2", "layer4.0.conv2", "layer4.1.conv2",
             "layer3.0.downsample.0", "layer4.0.downsample.0"]
    assert _dilations(encoder, names) == ([1, 2, 2, 4, 1, 1], [1, 1, 1, 1, 1, 1])
    # ResNet-18 (basic blocks): the first block's second conv takes the new dilation.
    encoder = build_encoder("resnet18dilated")
    names = ["layer3.0.conv1", "layer3.0.conv2", "layer4.0.conv1", "layer4.1.conv1"]
    assert _dilations(encoder, names) == ([1, 2, 2, 4], [1, 1, 1, 1])
    encoder = build_encoder("resnet50dilated16")
    names = ["layer3.0.conv2", "layer4.0.conv2", "layer4.1.conv2"]
    assert _dilations(encoder, names) == ([1, 1, 2], [2, 1, 1])
    # MobileNetV2: blocks 7 and 14 were strided; 8..13 get 2, 15..17 get 4.
    encoder = build_encoder("mobilenetv2dilated")
    names = [f"features.{i}.conv.3" for i in (7, 8, 13, 14, 15, 17)]
    assert _dilations(encoder, names) == ([1, 2, 2, 2, 4, 4], [1, 1, 1, 1, 1, 1])


@pytest.mark.parametrize("name", ["resnet18dilated", "mobilenetv2dilated"])
def test_norm_layer_is_injected(name):
    encoder = build_encoder(name, norm_layer=lambda c: nn.GroupNorm(4, c))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in encoder.modules())
    assert sum(isinstance(m, nn.GroupNorm) for m in encoder.modules()) > 10
    with torch.no_grad():
        assert encoder(torch.randn(1, 3, 33, 33))[-1].shape[1] == encoder.out_channels[-1]


def test_resnext_uses_grouped_convolutions():
    encoder = build_encoder("resnext101")
    assert encoder.layer1[0].conv2.groups == 32
    assert encoder.layer1[0].conv2.in_channels == 128


def test_return_feature_maps_false_gives_the_last_map_only():
    encoder = build_encoder("resnet18").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        last, = encoder(x, return_feature_maps=False)
        assert torch.equal(last, encoder(x)[-1])
