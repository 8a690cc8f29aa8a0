"""The F(2x2, 3x3) Winograd convolution against F.conv2d: values, gradients, rounding, and when
it is used."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mit_semseg.nn import winograd
from mit_semseg.nn.winograd import conv3x3, winograd_conv3x3, winograd_pays


def _inputs(batch, in_ch, out_ch, size, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, in_ch, *size, generator=gen, dtype=dtype)
    w = torch.randn(out_ch, in_ch, 3, 3, generator=gen, dtype=dtype) / (9 * in_ch) ** 0.5
    b = torch.randn(out_ch, generator=gen, dtype=dtype)
    grad_out = torch.randn(batch, out_ch, *size, generator=gen, dtype=dtype)
    return x, w, b, grad_out


def _value_and_grads(conv, x, w, b, grad_out):
    x, w, b = (t.detach().clone().requires_grad_() for t in (x, w, b))
    y = conv(x, w, b)
    return (y, *torch.autograd.grad(y, (x, w, b), grad_out))


# even and odd sides, a side of one pixel, a single tile, a batch of three
@pytest.mark.parametrize("batch,size", [(2, (8, 10)), (1, (7, 5)), (3, (1, 9)), (1, (2, 2)),
                                        (2, (13, 1))])
def test_equals_the_convolution_in_float64(batch, size):
    x, w, b, grad_out = _inputs(batch, 5, 4, size)
    expected = _value_and_grads(lambda *a: F.conv2d(*a, padding=1), x, w, b, grad_out)
    got = _value_and_grads(winograd_conv3x3, x, w, b, grad_out)
    for name, g, e in zip(("output", "grad input", "grad weight", "grad bias"), got, expected):
        assert g.shape == e.shape, name
        # the same sums in another order: float64 rounding of values of order 1
        torch.testing.assert_close(g, e, rtol=0, atol=1e-12, msg=name)


def test_gradients_pass_gradcheck():
    x, w, b, _ = _inputs(1, 2, 3, (5, 6))
    assert torch.autograd.gradcheck(winograd_conv3x3, (x.requires_grad_(), w.requires_grad_(),
                                                       b.requires_grad_()))


def test_channels_last_input_gives_the_same_result():
    x, w, b, grad_out = _inputs(2, 6, 3, (9, 8))
    expected = _value_and_grads(winograd_conv3x3, x, w, b, grad_out)
    got = _value_and_grads(winograd_conv3x3, x.contiguous(memory_format=torch.channels_last),
                           w, b, grad_out)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-12)


def test_float32_rounding_is_that_of_the_direct_convolution():
    # the transforms hold only 0, +-1 and +-1/2: against a float64 reference the Winograd
    # form's float32 error must stay of the direct convolution's order (measured: about the
    # same for the output and the input gradient, 5x smaller for the weight gradient)
    x, w, b, grad_out = _inputs(2, 256, 64, (24, 20))
    reference = _value_and_grads(lambda *a: F.conv2d(*a, padding=1), x, w, b, grad_out)
    f32 = [t.float() for t in (x, w, b, grad_out)]
    direct = _value_and_grads(lambda *a: F.conv2d(*a, padding=1), *f32)
    fast = _value_and_grads(winograd_conv3x3, *f32)
    for name, r, d, f in zip(("output", "grad input", "grad weight", "grad bias"),
                             reference, direct, fast):
        scale = r.abs().max().item()
        err_direct = (d.double() - r).abs().max().item() / scale
        err_fast = (f.double() - r).abs().max().item() / scale
        assert err_fast < max(4 * err_direct, 1e-6), (name, err_fast, err_direct)


def test_only_the_requested_gradients_are_computed():
    x, w, _, grad_out = _inputs(1, 3, 2, (6, 6))
    w.requires_grad_()
    (grad_w,) = torch.autograd.grad(winograd_conv3x3(x, w), (w,), grad_out)
    expected = torch.autograd.grad(F.conv2d(x, w, padding=1), (w,), grad_out)[0]
    torch.testing.assert_close(grad_w, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("x_shape,w_shape,match", [
    ((1, 3, 5, 5), (2, 3, 1, 1), "3, 3"),
    ((3, 5, 5), (2, 3, 3, 3), "N, C, H, W"),
    ((1, 4, 5, 5), (2, 3, 3, 3), "reads 3 channels, the input has 4"),
])
def test_rejects_shapes_it_cannot_convolve(x_shape, w_shape, match):
    with pytest.raises(ValueError, match=match):
        winograd_conv3x3(torch.zeros(x_shape), torch.zeros(w_shape))


WIDE = (2, 1024, 16, 16), (512, 1024, 3, 3)  # 1024 x 512 channel pairs, 64 tiles per image


def test_wide_float32_cpu_convolutions_take_the_winograd_form():
    x, w = torch.zeros(WIDE[0]), torch.zeros(WIDE[1])
    assert winograd_pays(x, w)
    assert w.shape[0] * w.shape[1] >= winograd.MIN_CHANNEL_PRODUCT


@pytest.mark.parametrize("case", ["narrow", "small map", "bfloat16", "float64", "autocast"])
def test_other_convolutions_stay_direct(case):
    x_shape, w_shape = WIDE
    dtype = torch.float32
    if case == "narrow":
        w_shape = (255, 1024, 3, 3)  # one output channel short of 512 x 512 pairs
    elif case == "small map":
        x_shape = (2, 1024, 14, 16)  # 7 x 8 = 56 tiles
    elif case in ("bfloat16", "float64"):
        dtype = getattr(torch, case)
    x, w = torch.zeros(x_shape, dtype=dtype), torch.zeros(w_shape, dtype=dtype)
    if case == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not winograd_pays(x, w)
    else:
        assert not winograd_pays(x, w)


def test_conv3x3_dispatches_on_winograd_pays(monkeypatch):
    calls = []
    real = winograd.winograd_conv3x3
    monkeypatch.setattr(winograd, "winograd_conv3x3",
                        lambda *a: calls.append(a[0].shape) or real(*a))
    x, w, b, _ = _inputs(1, 3, 2, (6, 6), dtype=torch.float32)
    narrow = conv3x3(x, w, b)
    assert calls == [] and torch.equal(narrow, F.conv2d(x, w, b, padding=1))
    monkeypatch.setattr(winograd, "winograd_pays", lambda x, w: True)
    torch.testing.assert_close(conv3x3(x, w, b), narrow, rtol=0, atol=1e-5)
    assert calls == [x.shape]
