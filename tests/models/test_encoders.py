import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mit_semseg.models import ENCODERS, build_encoder
from mit_semseg.models.encoders.hrnet import HRModule, HRNetV2Encoder


def expected_size(size: int, stride: int) -> int:
    # Every strided layer (3x3 pad 1, max-pool 3/2 pad 1, 1x1 stride 2) maps n to ceil(n / 2).
    return math.ceil(size / stride)


@pytest.mark.parametrize("name", ENCODERS.names())
def test_declared_channels_and_strides_match_the_maps(name, upstream_reference):
    encoder = build_encoder(name).eval()
    h, w = 33, 49  # odd sizes exercise the rounding of every strided layer
    with torch.no_grad():
        maps = encoder(torch.randn(1, 3, h, w))
    assert len(maps) == len(encoder.out_channels) == len(encoder.strides)
    for fmap, channels, stride in zip(maps, encoder.out_channels, encoder.strides):
        assert fmap.shape == (1, channels, expected_size(h, stride), expected_size(w, stride))
    # The original's arch names promise their recorded shapes (e.g. "dilated" = stride 8).
    recorded = upstream_reference["encoder_feature_maps"].get(name)
    if recorded is not None:
        with torch.no_grad():
            maps = encoder(torch.randn(1, 3, 64, 96))
        assert [list(m.shape) for m in maps] == recorded


def test_output_stride_argument_overrides_the_name():
    assert build_encoder("resnet18dilated", output_stride=16).strides == [4, 8, 16, 16]
    assert build_encoder("mobilenetv2dilated", output_stride=32).strides == [4, 8, 16, 32, 32]
    with pytest.raises(ValueError, match="output_stride"):
        build_encoder("resnet18", output_stride=4)


def test_every_recorded_original_encoder_is_registered(upstream_reference):
    assert set(upstream_reference["encoder_feature_maps"]) <= set(ENCODERS.names())


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


@pytest.mark.parametrize("name", ["resnet18dilated", "mobilenetv2dilated", "hrnetv2"])
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


def test_hrnet_returns_one_map_either_way():
    encoder = HRNetV2Encoder(widths=(4, 8), stage_modules=(1,), blocks_per_branch=1,
                             stem_blocks=1).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        maps = encoder(x)
        assert len(maps) == 1 and maps[0].shape == (1, 12, 8, 8)
        assert torch.equal(encoder(x, return_feature_maps=False)[0], maps[0])


def test_hrnet_is_parametrised_by_widths_and_depths():
    # W48 is the registered default; other widths/depths are plain arguments.
    assert build_encoder("hrnetv2").out_channels == [48 + 96 + 192 + 384]
    small = ENCODERS.build("hrnetv2", widths=(6, 12, 24), stage_modules=(2, 1),
                           blocks_per_branch=1, stem_blocks=2)
    assert small.out_channels == [42] and small.strides == [4]
    assert len(small.layer1) == 2 and len(small.stage2) == 2 and len(small.stage3) == 1
    assert not hasattr(small, "stage4")
    assert len(small.stage3[0].branches[2]) == 1
    assert small.stage3[0].branches[2][0].conv1.in_channels == 24
    with torch.no_grad():
        assert small.eval()(torch.randn(2, 3, 45, 45))[0].shape == (2, 42, 12, 12)
    with pytest.raises(ValueError, match="stage_modules"):
        HRNetV2Encoder(widths=(6, 12, 24), stage_modules=(1,))
    with pytest.raises(ValueError, match="output_stride of 4"):
        build_encoder("hrnetv2", output_stride=8)


def test_hrnet_exchange_sums_resized_branches():
    torch.manual_seed(0)
    module = HRModule([4, 8, 16], num_blocks=1, norm_layer=nn.BatchNorm2d).eval()
    xs = [torch.randn(2, 4, 12, 12), torch.randn(2, 8, 6, 6), torch.randn(2, 16, 3, 3)]
    with torch.no_grad():
        out = module([x.clone() for x in xs])
        b = [branch(x) for branch, x in zip(module.branches, xs)]
        fuse = module.fuse_layers

        def up(x, size):
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

        # Highest resolution: itself + lower ones after 1x1 conv-norm and upsampling.
        expected0 = b[0] + up(fuse[0][1](b[1]), (12, 12)) + up(fuse[0][2](b[2]), (12, 12))
        # Lowest resolution: two stride-2 steps from branch 0 (ReLU only between them).
        chain = fuse[2][0]
        assert len(chain) == 2 and isinstance(chain[0][2], nn.ReLU) and len(chain[1]) == 2
        assert chain[0][0].stride == (2, 2) and chain[0][0].out_channels == 4
        expected2 = chain(b[0]) + fuse[2][1](b[1]) + b[2]
    assert [o.shape[1:] for o in out] == [x.shape[1:] for x in xs]
    torch.testing.assert_close(out[0], expected0.relu())
    torch.testing.assert_close(out[2], expected2.relu())
    assert fuse[0][0] is None and fuse[1][1] is None and fuse[2][2] is None
