"""Helpers shared by the model tests."""

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def randomise_batchnorm(module: nn.Module, bias: float = 0.2) -> nn.Module:
    """Non-trivial running statistics and affine parameters in every BatchNorm of ``module``
    (in place), so that folding them, or a model's predictions, are tested on varied values;
    biases are drawn from ``[-bias, bias]``."""
    for m in module.modules():
        if isinstance(m, _BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            if m.affine:
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-bias, bias)
    return module
