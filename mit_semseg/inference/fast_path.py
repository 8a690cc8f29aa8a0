"""Speed settings for inference (and training) on CPU and GPU. Only those that keep the numbers
up to float rounding are ever on by default (``MODEL.fast_inference``); reduced precision is
always opt-in.

* :func:`fold_batchnorm` merges each eval-mode BatchNorm into the convolution before it, which
  saves one pass over every feature map.
* :func:`~mit_semseg.models.decoders.factored.factor_decoders` computes the PPM and UPerNet
  heads' fusion convolutions over upsampled maps in closed form at the small maps' sizes.
* :class:`ConvPlan`: feature-map layout (NCHW or channels-last NHWC) and the kernel of the
  1x1 convolutions (oneDNN or one GEMM, never PyTorch's slow single-thread fallback); the
  default, :data:`DEFAULT_CONV_PLAN` (NHWC, oneDNN), is fixed: it measured fastest, or
  within 5% of the fastest, in every case of ``benchmarks/bench_inference.py``'s
  ``ours_plan_*`` variants, so nothing is timed at start-up (a plan chosen by timing it
  there cost 1-20 s per process and could pick a slower plan when the machine was busy).
* :func:`optimize_for_inference` applies all three; ``MODEL.fast_inference`` turns it on for
  ``eval.py``, ``eval_multipro.py`` and ``test.py``.
* :func:`compile_module` wraps :func:`torch.compile` (shapes dynamic, optionally with
  inductor's freezing, which folds the weights into the graph and fuses ReLU and residual
  additions into the oneDNN convolutions); worth it only for long runs.
* Reduced precision (``amp="bf16"``) is an argument of
  :func:`mit_semseg.inference.predict.predict_probs` and ``TRAIN.amp`` for training; it changes the
  numbers, so it is never a default.

``benchmarks/`` measures what each of these buys on a given machine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mit_semseg.models.decoders.factored import factor_decoders

__all__ = [
    "CONV_PLANS",
    "DEFAULT_CONV_PLAN",
    "ConvPlan",
    "LogitsNetwork",
    "PointwiseConv2d",
    "apply_conv_plan",
    "compile_module",
    "fold_batchnorm",
    "optimize_for_inference",
    "to_channels_last",
]

logger = logging.getLogger(__name__)


def to_channels_last(module: nn.Module) -> nn.Module:
    """Converts the 4-d parameters and buffers of ``module`` to channels-last, in place.

    Inputs need no conversion: a convolution whose weight is channels-last produces a
    channels-last output whatever the input layout.

    Returns:
        ``module`` itself, for chaining.
    """
    return module.to(memory_format=torch.channels_last)


class LogitsNetwork(nn.Module):
    """``images -> (B, num_class, h, w)``: encoder and decoder scores as one module, the part
    of the inference that is compiled or exported (the full-size tail is not: see
    :mod:`mit_semseg.inference.banded_tail`)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(images))


def compile_module(module: nn.Module, mode: str | None = None, freezing: bool = False
                   ) -> nn.Module:
    """``torch.compile(module, dynamic=True, mode=mode)``, optionally with inductor freezing.

    Freezing (inference only, under ``torch.no_grad``/``inference_mode``) treats the weights
    as constants, so inductor pre-packs them for oneDNN and fuses bias, ReLU and residual
    additions into the convolutions. The compiled module shares parameters with ``module``
    (without freezing, state dicts and checkpoints keep using ``module``). The first call at
    each new input rank compiles, which takes seconds to minutes on a CPU; inductor caches
    compiled graphs on disk (``TORCHINDUCTOR_CACHE_DIR``), so later processes start faster.
    """
    logger.info("compiling %s (mode=%s, freezing=%s)", type(module).__name__, mode, freezing)
    return torch.compile(module, dynamic=True, mode=mode, options={"freezing": freezing})


def fold_batchnorm(module: nn.Module, run_example: Callable[[], Any]) -> int:
    """Merges every eval-mode BatchNorm fed directly by a convolution into it, in place.

    Which BatchNorm follows which convolution is read from one example forward pass
    (``run_example``, e.g. a small zero image through the model): a BatchNorm whose input is
    the very tensor a ``Conv2d`` returned is folded (the convolution's weight is scaled by
    ``gamma / sqrt(running_var + eps)`` and it gets the matching bias) and replaced by
    ``nn.Identity``. This assumes such a convolution output feeds nothing but that
    BatchNorm, which holds for every model in the registry (tests check each). The state dict
    changes, so fold an inference copy, after loading the weights.

    Returns:
        the number of BatchNorm layers folded.
    Raises:
        ValueError: if ``module`` is in training mode (batch statistics cannot be folded).
    """
    if module.training:
        raise ValueError("fold_batchnorm needs a module in eval mode (call .eval() first)")
    # id -> (conv, output): holding the output keeps its id from being reused by a later tensor
    conv_outputs: dict[int, tuple[nn.Conv2d, torch.Tensor]] = {}
    pairs: list[tuple[nn.Conv2d, _BatchNorm]] = []

    def after_conv(conv: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        conv_outputs[id(output)] = (conv, output)

    def before_bn(bn: nn.Module, inputs: tuple) -> None:
        conv, _ = conv_outputs.get(id(inputs[0]), (None, None))
        if conv is not None and bn.running_mean is not None:
            pairs.append((conv, bn))

    handles = [m.register_forward_hook(after_conv) for m in module.modules()
               if isinstance(m, nn.Conv2d)]
    handles += [m.register_forward_pre_hook(before_bn) for m in module.modules()
                if isinstance(m, _BatchNorm)]
    try:
        with torch.inference_mode():
            run_example()
    finally:
        for handle in handles:
            handle.remove()
    conv_outputs.clear()
    folded = {id(bn) for _, bn in pairs}
    if len(folded) != len(pairs):
        raise ValueError("a BatchNorm ran more than once in the example pass; cannot fold")
    with torch.no_grad():
        for conv, bn in pairs:
            scale = torch.rsqrt(bn.running_var.double() + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight.double()
            shift = -bn.running_mean.double() * scale
            if bn.bias is not None:
                shift = shift + bn.bias.double()
            if conv.bias is not None:
                shift = shift + conv.bias.double() * scale
            weight = conv.weight.double() * scale.reshape(-1, 1, 1, 1)
            conv.weight.copy_(weight.to(conv.weight.dtype))
            conv.bias = nn.Parameter(shift.to(conv.weight.dtype), requires_grad=False)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if id(child) in folded:
                setattr(parent, name, nn.Identity())
    logger.debug("folded %d BatchNorm layers into convolutions", len(pairs))
    return len(pairs)


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 ``nn.Conv2d`` that chooses its CPU inference kernel explicitly.

    For batches under 16 on one thread, PyTorch sends 1x1 convolutions to its generic
    ``_slow_conv2d_forward`` (a heuristic from older CPUs), which on channels-last inputs also
    copies the input to the default layout first. Here ``kernel`` picks instead:

    * ``"onednn"``: the oneDNN convolution every other layer uses;
    * ``"gemm"``: one matrix product over the pixels (BLAS ``sgemm``), no copy in either
      layout (a channels-last map *is* a ``(pixels, channels)`` matrix);
    * ``"torch"``: ``nn.Conv2d``'s own dispatch, fallback included (a control for
      ``benchmarks/bench_inference.py``).

    ``"gemm"`` depends on the BLAS (MKL is slow on some non-Intel CPUs), oneDNN does not; the
    default plan uses oneDNN, ``benchmarks/bench_inference.py`` (``ours_plan_*``) measures
    the others. Only CPU float32 inference outside autocast is rerouted; training, autocast,
    ``torch.compile`` and other devices run the ordinary ``nn.Conv2d`` path. The state dict
    is that of ``nn.Conv2d``.
    """

    kernel: str = "onednn"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Under torch.compile the graph keeps an ordinary convolution: inductor picks (and,
        # with freezing, pre-packs) its own kernel, and cannot trace mkldnn_convolution.
        if (self.kernel == "torch" or x.device.type != "cpu" or x.dtype != torch.float32
                or torch.is_grad_enabled() or torch.is_autocast_enabled("cpu")
                or torch.compiler.is_compiling()):
            return super().forward(x)
        if self.kernel == "onednn":
            return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride,
                                            self.dilation, self.groups)
        weight = self.weight.reshape(self.out_channels, self.in_channels)
        nhwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        if self.stride != (1, 1):
            layout = torch.channels_last if nhwc else torch.contiguous_format
            x = x[:, :, ::self.stride[0], ::self.stride[1]].contiguous(memory_format=layout)
        if nhwc:
            # NHWC memory seen as (B, H, W, C): a linear layer over the last axis
            return F.linear(x.permute(0, 2, 3, 1), weight, self.bias).permute(0, 3, 1, 2)
        batch, _, height, width = x.shape
        y = torch.matmul(weight, x.contiguous().reshape(batch, self.in_channels, height * width))
        if self.bias is not None:
            y += self.bias[:, None]
        return y.reshape(batch, self.out_channels, height, width)


def _is_pointwise(conv: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.groups == 1
            and conv.padding == (0, 0) and conv.padding_mode == "zeros")


@dataclass(frozen=True)
class ConvPlan:
    """How the convolutions of an inference module run on CPU.

    Args:
        channels_last: NHWC feature maps (weights converted once) instead of NCHW.
        pointwise: kernel of the 1x1 convolutions, ``"onednn"`` or ``"gemm"`` (see
            :class:`PointwiseConv2d`); never PyTorch's slow fallback.
    """

    channels_last: bool
    pointwise: str

    def __post_init__(self) -> None:
        if self.pointwise not in POINTWISE_KERNELS:
            raise ValueError(f"pointwise kernel must be one of {POINTWISE_KERNELS}, "
                             f"got {self.pointwise!r}")

    def __str__(self) -> str:
        return f"{'NHWC' if self.channels_last else 'NCHW'} + {self.pointwise} 1x1"


POINTWISE_KERNELS = ("onednn", "gemm", "torch")
CONV_PLANS = tuple(ConvPlan(layout, kernel) for layout in (False, True)
                   for kernel in ("onednn", "gemm"))
# The plan of MODEL.fast_inference on CPU: benchmarks/RESULTS.md, inference@epyc-avx512bf16
DEFAULT_CONV_PLAN = ConvPlan(channels_last=True, pointwise="onednn")


def apply_conv_plan(module: nn.Module, plan: ConvPlan) -> nn.Module:
    """Switches ``module`` (in place, reversibly) to ``plan``'s layout and 1x1 kernel.

    Returns:
        ``module``, for chaining.
    """
    for conv in module.modules():
        if type(conv) is nn.Conv2d and _is_pointwise(conv):
            conv.__class__ = PointwiseConv2d  # same parameters and state dict, new forward
        if isinstance(conv, PointwiseConv2d):
            conv.kernel = plan.pointwise
    layout = torch.channels_last if plan.channels_last else torch.contiguous_format
    return module.to(memory_format=layout)


def optimize_for_inference(segmentation_module: nn.Module, device: torch.device | str,
                           plan: ConvPlan = DEFAULT_CONV_PLAN, fold_bn: bool = True,
                           factor_heads: bool = True) -> nn.Module:
    """Makes an eval-mode copy-to-be faster, in place, keeping its outputs.

    BatchNorm is folded into the convolutions, PPM and UPerNet heads are factored
    (:mod:`mit_semseg.models.decoders.factored`), and the convolutions run ``plan`` (layout,
    1x1 kernel; on CUDA: channels-last, cuDNN).
    It also marks the module ``fast_tail``: :func:`~mit_semseg.inference.predict.predict_probs`
    then upsamples and averages its scores by bands of rows
    (:mod:`mit_semseg.inference.banded_tail`). Probabilities equal the plain module's up to float
    rounding (at most 1.3e-4 on the released architectures, docs/evaluation.md).

    The module afterwards serves inference only (its state dict and training forward change),
    so apply this to a module loaded for inference.

    Returns:
        ``segmentation_module``, in eval mode.
    """
    device = torch.device(device)
    segmentation_module.eval()
    segmentation_module.fast_tail = True
    if fold_bn:
        image = torch.zeros(1, 3, 64, 64, device=device)
        fold_batchnorm(segmentation_module,
                       lambda: segmentation_module({"img_data": image}, segSize=(64, 64)))
    if factor_heads:
        factor_decoders(segmentation_module)
    if device.type != "cpu":
        return to_channels_last(segmentation_module)
    return apply_conv_plan(segmentation_module, plan)
