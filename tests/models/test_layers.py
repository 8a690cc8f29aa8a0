import math

import pytest
import torch
import torch.nn as nn

from mit_semseg.models.layers import conv_norm, init_weights, upsample


@pytest.mark.parametrize("fan,expected_fan", [
    ("in", 9 * 64 // 4),  # k * k * in / groups (torch's kaiming fan_in)
    ("out", 9 * 256),  # k * k * out, groups ignored (the original's MobileNetV2)
    ("out_per_group", 9 * 256 // 4),  # k * k * out / groups (the original's ResNeXt)
])
def test_init_weights_draws_conv_weights_from_the_chosen_fan(fan, expected_fan):
    module = nn.Sequential(nn.Conv2d(64, 256, 3, groups=4, bias=False), nn.BatchNorm2d(256),
                           nn.GroupNorm(4, 256))
    init_weights(module, fan=fan, norm_bias=1e-4)
    std = module[0].weight.std().item()
    assert std == pytest.approx(math.sqrt(2 / expected_fan), rel=0.03)
    assert abs(module[0].weight.mean().item()) < 0.05 * std
    for norm in module[1:]:
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 1e-4)


def test_init_weights_leaves_norms_without_parameters_alone():
    module = nn.Sequential(nn.BatchNorm2d(4, affine=False))
    init_weights(module, fan="in")
    assert module[0].weight is None and list(module.parameters()) == []


@pytest.mark.parametrize("kernel,stride", [(1, 1), (3, 1), (3, 2)])
def test_conv_norm_keeps_the_size_up_to_the_stride(kernel, stride):
    block = conv_norm(3, 8, kernel, stride, relu=True).eval()
    assert [k for k in block.state_dict() if "weight" in k] == ["0.weight", "1.weight"]
    assert block[0].bias is None and isinstance(block[2], nn.ReLU)
    with torch.no_grad():
        out = block(torch.randn(1, 3, 15, 20))
    assert out.shape == (1, 8, math.ceil(15 / stride), math.ceil(20 / stride))
    assert out.min() >= 0
    assert len(conv_norm(3, 8, kernel, stride, relu=False)) == 2


def test_upsample_to_the_same_size_is_the_identity():
    # SegmentationModule resizes the auxiliary logits unconditionally and relies on this.
    x = torch.randn(2, 3, 7, 9)
    assert torch.equal(upsample(x, (7, 9)), x)
    assert upsample(x, (14, 5)).shape == (2, 3, 14, 5)
