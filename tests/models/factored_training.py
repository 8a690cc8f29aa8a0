"""Both forms of the PPM and UPerNet heads trained side by side, for test_factored.py and the
DDP worker it spawns (``_factored_dist_worker.py``)."""

from __future__ import annotations

import copy

import torch
from model_helpers import randomise_batchnorm
from torch import nn

from mit_semseg.models import (
    SegmentationModule,
    build_decoder,
    build_encoder,
    build_segmentation_model,
)
from mit_semseg.nn.deterministic_ops import NLLLoss

NUM_CLASS = 7

# Tolerances of the training comparisons. Both forms add the same products in another order,
# so they differ by rounding: float64 (unit roundoff 1.1e-16) shows that the factored form is
# exact; float32 (6e-8) that it stays within rounding at the precision training runs in.
# Errors are measured against the scale of what is compared: the largest value of the tensor,
# but at least a thousandth of the largest of all (some gradients are zero up to rounding,
# e.g. of a bias followed by BatchNorm, and have no scale of their own).
# * float64, one step: 1e-10. A sum of ~1e4 products in another order moves by ~1e-13 of its
#   scale; BatchNorm's division by the statistics of a few values adds up to two orders.
# * float32, one step: 1e-4, the same margin over float32's roundoff (seen: up to 1e-5;
#   a formula that is wrong anywhere misses by orders of magnitude).
# * float64, after 3 SGD steps at the recipe's lr 0.02: 1e-7. From random weights, a step
#   amplifies any difference of the weights 10^2-10^4 times (benchmarks/RESULTS.md,
#   divergence@xeon-vnni: 1e-7 grows to 5e-3 in one step), so 1e-16 grows to ~1e-9 in 3 steps. In
#   float32 the same amplification makes any two summation orders (also the plain form on
#   two thread counts) drift apart by 1e-4 and more within a few steps, so weights after
#   several steps are compared in float64.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}
WEIGHTS_TOLERANCE = 1e-7
IMAGE = (48, 40)  # (H, W) of the images the encoder maps stand for


def assert_equal_to_scale(got: dict, expected: dict, tol: float, what: str) -> None:
    assert got.keys() == expected.keys()
    floor = 1e-3 * max(value.abs().max().item() for value in expected.values())
    for name, value in expected.items():
        bound = tol * max(value.abs().max().item(), floor)
        worst = (got[name] - value).abs().max().item()
        assert worst <= bound, f"{what} {name}: max |difference| {worst:.3g} > {bound:.3g}"


class EncoderMaps(nn.Module):
    """Stands in for encoder ``arch``: its feature maps, shaped as the encoder declares them
    (``out_channels``, ``strides``) for ``IMAGE``, are parameters.

    The encoder's backward starts from the gradient of the loss with respect to its maps, so
    equal gradients of the maps (and of the decoder) mean equal gradients of every encoder
    weight; SGD steps move the maps as they would move an encoder's output.
    """

    def __init__(self, arch: str, batch: int, dtype: torch.dtype) -> None:
        super().__init__()
        with torch.device("meta"):
            encoder = build_encoder(arch)
        self.out_channels, self.strides = encoder.out_channels, encoder.strides
        self.maps = nn.ParameterList(
            nn.Parameter(torch.randn(batch, width, -(-IMAGE[0] // stride),
                                     -(-IMAGE[1] // stride), dtype=dtype))
            for width, stride in zip(self.out_channels, self.strides))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        # plus a per-image offset, so that replicas given different images differ
        offset = images.flatten(1).mean(1).reshape(-1, 1, 1, 1)
        return [m + offset for m in self.maps]


def make_forms(encoder, decoder, dtype=torch.float64, stand_in=True,
               norm_layer=nn.BatchNorm2d):
    """``(plain, factored)``: the same model (weights, BatchNorm buffers) in both forms, on
    encoder maps (``stand_in``) or on the real encoder."""
    torch.manual_seed(0)
    if stand_in:
        maps = EncoderMaps(encoder, 2, dtype)
        head = build_decoder(decoder, NUM_CLASS, in_channels=maps.out_channels,
                             norm_layer=norm_layer)
        plain = SegmentationModule(maps, head, NLLLoss(ignore_index=-1), deep_sup_scale=0.4)
    else:
        plain = build_segmentation_model(encoder, decoder, NUM_CLASS, norm_layer=norm_layer)
    plain.decoder.factored_training = False
    plain = randomise_batchnorm(plain.to(dtype).train())
    factored = copy.deepcopy(plain)
    factored.decoder.factored_training = True
    return plain, factored


def make_batches(module, steps, dtype, devices=1, seed=1):
    """Per step, one batch dict (or, with ``devices`` > 1, a list of one per device) of 2
    images each."""
    scale = module.output_stride
    gen = torch.Generator().manual_seed(seed)
    label = (2, -(-IMAGE[0] // scale), -(-IMAGE[1] // scale))

    def batch():
        return {"img_data": torch.randn(2, 3, *IMAGE, generator=gen, dtype=dtype),
                "seg_label": torch.randint(-1, NUM_CLASS, label, generator=gen)}

    return [batch() if devices == 1 else [batch() for _ in range(devices)]
            for _ in range(steps)]


def sgd_steps(module, batches, call=None):
    """SGD as the recipe (lr 0.02, momentum 0.9, weight decay 1e-4) over ``batches`` through
    ``call`` (default ``module``): ``(losses, gradients of the first step, floating-point
    state after the last step)``."""
    optimizer = torch.optim.SGD(module.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    losses, first_grads = [], None
    for step, batch in enumerate(batches):
        optimizer.zero_grad()
        torch.manual_seed(10 + step)  # the same dropout masks in both forms
        loss, _ = (call or module)(batch)
        loss = loss.mean()
        loss.backward()
        losses.append(loss.detach())
        if first_grads is None:
            first_grads = {name: p.grad.clone() for name, p in module.named_parameters()
                           if p.grad is not None}
        optimizer.step()
    state = {key: value.clone() for key, value in module.state_dict().items()
             if value.is_floating_point()}
    return torch.stack(losses), first_grads, state


def compare_training(plain, factored, batches, dtype, wrap=None):
    """Trains both forms on ``batches`` (through ``wrap(module)`` if given) and checks losses,
    the first step's gradients and the state after the last step; returns the plain form's
    floating-point state before and after."""
    tol = TOLERANCE[dtype] if len(batches) == 1 else WEIGHTS_TOLERANCE
    initial = {key: value.clone() for key, value in plain.state_dict().items()
               if value.is_floating_point()}
    losses_p, grads_p, state_p = sgd_steps(plain, batches, wrap and wrap(plain))
    losses_f, grads_f, state_f = sgd_steps(factored, batches, wrap and wrap(factored))
    torch.testing.assert_close(losses_f, losses_p, rtol=tol, atol=0)
    # every parameter has a gradient, except the stand-in maps that the decoder does not read
    assert {name for name, _ in plain.named_parameters() if not name.startswith("encoder.maps")
            } <= grads_p.keys()
    assert_equal_to_scale(grads_f, grads_p, TOLERANCE[dtype], "gradient of")
    # control: the two forms did compute differently (summed in another order)
    assert any(not torch.equal(grads_f[name], grads_p[name]) for name in grads_p)
    assert_equal_to_scale(state_f, state_p, tol, f"after {len(batches)} step(s),")
    return initial, state_p


