"""The pyramid pooling of PPM and UPerNet: bins (1, 2, 3, 6), average pooling, in that order.

Checked without the original: the 1x1 convolution after each pooling (``ppm.<i>.1`` in PPM,
``ppm_conv.<i>.0`` in UPerNet, names fixed by the checkpoint format) must receive the mean of
each adaptive bin of the last encoder map, computed here by hand. The map is 13x17, so that
no bin size divides it and neighbouring bins overlap as adaptive pooling requires.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mit_semseg.models import build_decoder

BINS = (1, 2, 3, 6)  # the original's pool_scales
HEIGHT, WIDTH = 13, 17


def bin_means(x: np.ndarray, bins: int) -> np.ndarray:
    """Adaptive average pooling of ``(B, C, H, W)``: bin ``i`` of ``n`` covers rows
    ``floor(i * H / n)`` to ``ceil((i + 1) * H / n)`` (exclusive), columns likewise."""
    height, width = x.shape[2:]
    out = np.empty(x.shape[:2] + (bins, bins))
    for i in range(bins):
        rows = slice(i * height // bins, math.ceil((i + 1) * height / bins))
        for j in range(bins):
            cols = slice(j * width // bins, math.ceil((j + 1) * width / bins))
            out[:, :, i, j] = x[:, :, rows, cols].mean(axis=(2, 3))
    return out


def conv_inputs(decoder: nn.Module, names: list[str], maps: list[torch.Tensor]) -> list:
    """What each named 1x1 convolution receives in one eval-mode forward pass."""
    modules = dict(decoder.named_modules())
    seen = {}
    handles = []
    for name in names:
        conv = modules[name]
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1), name
        handles.append(conv.register_forward_pre_hook(
            lambda _m, inputs, name=name: seen.setdefault(name, inputs[0].detach().clone())))
    with torch.no_grad():
        decoder.eval()(maps)
    for handle in handles:
        handle.remove()
    return [seen[name] for name in names]


def test_bin_means_is_adaptive_average_pooling():
    # the hand-made reference against torch's, on a map where bins overlap
    x = torch.randn(1, 2, HEIGHT, WIDTH, dtype=torch.float64)
    for bins in BINS:
        np.testing.assert_allclose(bin_means(x.numpy(), bins),
                                   F.adaptive_avg_pool2d(x, bins).numpy(), rtol=1e-12)


def test_ppm_pools_the_last_map_into_1_2_3_6_bins():
    decoder = build_decoder("ppm", num_class=5, in_channels=[16, 32])
    assert len(decoder.ppm) == len(BINS)
    top = torch.randn(2, 32, HEIGHT, WIDTH)
    maps = [torch.randn(2, 16, HEIGHT, WIDTH), top]
    pooled = conv_inputs(decoder, [f"ppm.{i}.1" for i in range(len(BINS))], maps)
    for bins, seen in zip(BINS, pooled):
        assert seen.shape == (2, 32, bins, bins)
        np.testing.assert_allclose(seen.numpy(), bin_means(top.numpy(), bins), rtol=1e-5,
                                   atol=1e-6, err_msg=f"{bins}x{bins} bins")


def test_upernet_pools_the_last_map_into_1_2_3_6_bins():
    decoder = build_decoder("upernet", num_class=5, in_channels=[4, 8, 16, 32])
    size = (HEIGHT, WIDTH)
    top = torch.randn(2, 32, *size)
    maps = [torch.randn(2, c, *size) for c in (4, 8, 16)] + [top]  # sizes do not matter here
    # both orders of the branch (pool, upsample, conv / pool, conv, upsample) where offered
    for fast_pooling in (False, True) if hasattr(decoder, "fast_pooling") else (False,):
        decoder.fast_pooling = fast_pooling
        seen = conv_inputs(decoder, [f"ppm_conv.{i}.0" for i in range(len(BINS))], maps)
        for bins, received in zip(BINS, seen):
            expected = torch.from_numpy(bin_means(top.numpy(), bins)).float()
            if received.shape[2:] == size:  # upsampled before the conv (the original's order)
                expected = F.interpolate(expected, size=size, mode="bilinear",
                                         align_corners=False)
            assert received.shape == expected.shape
            torch.testing.assert_close(received, expected, rtol=1e-5, atol=1e-6,
                                       msg=lambda m, b=bins: f"{b}x{b} bins: {m}")
