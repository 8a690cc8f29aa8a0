"""Optimizers and learning-rate schedule of the original recipe: one SGD per net, poly decay."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["PolySchedule", "build_optimizers", "group_weight", "poly_lr"]


def poly_lr(base_lr: float, cur_iter: int, max_iters: int, power: float) -> float:
    """Poly learning rate ``base_lr * (1 - cur_iter / max_iters) ** power``.

    Args:
        cur_iter: 0-based index of the step about to be taken, ``0 <= cur_iter < max_iters``.
    """
    if max_iters <= 0 or not 0 <= cur_iter <= max_iters:
        raise ValueError(f"poly_lr needs 0 <= cur_iter ({cur_iter}) <= max_iters ({max_iters})")
    return base_lr * (1.0 - cur_iter / max_iters) ** power


@dataclass(frozen=True)
class PolySchedule:
    """Per-optimizer base learning rates decayed by :func:`poly_lr` over ``max_iters`` steps.

    ``frozen_until`` holds optimizers still (learning rate 0) before the step it names
    (``{"encoder": TRAIN.freeze_encoder_iters}``); from that step on their rate is the poly
    schedule's at the current step.
    """

    base_lrs: Mapping[str, float]
    max_iters: int
    power: float
    frozen_until: Mapping[str, int] = field(default_factory=dict)

    def apply(self, optimizers: Mapping[str, torch.optim.Optimizer], cur_iter: int
              ) -> dict[str, float]:
        """Set every parameter group's lr for step ``cur_iter``; return the values set."""
        lrs = {}
        for name, optimizer in optimizers.items():
            lrs[name] = poly_lr(self.base_lrs[name], cur_iter, self.max_iters, self.power)
            if cur_iter < self.frozen_until.get(name, 0):
                lrs[name] = 0.0
            for group in optimizer.param_groups:
                group["lr"] = lrs[name]
        return lrs


_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
               nn.modules.instancenorm._InstanceNorm)


def group_weight(module: nn.Module) -> list[dict[str, Any]]:
    """Split trainable parameters into a weight-decay group and a no-decay group.

    Convolution and linear weights are decayed; their biases and all normalisation-layer
    parameters are not (as in the original).

    Raises:
        ValueError: a trainable parameter belongs to none of these layer types.
    """
    decay, no_decay, seen = [], [], set()
    for m in module.modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            targets = {"weight": decay, "bias": no_decay}
        elif isinstance(m, _NORM_TYPES):
            targets = {"weight": no_decay, "bias": no_decay}
        else:
            continue
        for name, param in m.named_parameters(recurse=False):
            if param.requires_grad and name in targets:
                targets[name].append(param)
                seen.add(id(param))
    unknown = [n for n, p in module.named_parameters() if p.requires_grad and id(p) not in seen]
    if unknown:
        raise ValueError(f"group_weight: parameters of unsupported layer types: {unknown}")
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizers(encoder: nn.Module, decoder: nn.Module, *, lr_encoder: float,
                     lr_decoder: float, momentum: float, weight_decay: float
                     ) -> dict[str, torch.optim.SGD]:
    """One SGD per net (``{"encoder": ..., "decoder": ...}``), as the original trained."""
    return {name: torch.optim.SGD(group_weight(net), lr=lr, momentum=momentum,
                                  weight_decay=weight_decay)
            for name, net, lr in (("encoder", encoder, lr_encoder),
                                  ("decoder", decoder, lr_decoder))}
