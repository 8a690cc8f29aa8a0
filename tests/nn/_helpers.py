"""Shared pieces of the SyncBN tests: reference BatchNorm twins and comparison helpers."""

from __future__ import annotations

import torch
from torch import nn

ATOL = 1e-5
RTOL = 1e-3

PLAIN_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, atol: float = ATOL,
                 rtol: float = RTOL) -> None:
    """``torch.allclose`` with a message giving the worst absolute error."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    diff = (actual.double() - expected.double()).abs().max().item() if actual.numel() else 0.0
    assert torch.allclose(actual.double(), expected.double(), atol=atol, rtol=rtol), \
        f"{what}: max abs error {diff:.3g}"


def randomize_bn(bn: nn.modules.batchnorm._BatchNorm, seed: int = 1) -> None:
    """Non-default weight, bias and running statistics, so copying them is tested too."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if bn.affine:
            bn.weight.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
            bn.bias.copy_(torch.rand(bn.num_features, generator=gen) - 0.5)
        if bn.track_running_stats:
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen))
            bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)


def twin(sync_cls: type, plain: nn.modules.batchnorm._BatchNorm, **kwargs) -> nn.Module:
    """A synchronised BN holding a *copy* of ``plain``'s parameters and buffers."""
    sync = sync_cls(plain.num_features, plain.eps, plain.momentum, plain.affine,
                    plain.track_running_stats, **kwargs)
    sync.load_state_dict(plain.state_dict())
    sync.train(plain.training)
    return sync


def compare_bn_state(sync: nn.Module, plain: nn.Module, atol: float = ATOL) -> None:
    """Parameter gradients and running statistics equal (count exactly)."""
    if plain.affine:
        assert_close(sync.weight.grad, plain.weight.grad, "weight grad", atol=atol)
        assert_close(sync.bias.grad, plain.bias.grad, "bias grad", atol=atol)
    if plain.track_running_stats:
        assert_close(sync.running_mean, plain.running_mean, "running_mean", atol=atol)
        assert_close(sync.running_var, plain.running_var, "running_var", atol=atol)
        assert int(sync.num_batches_tracked) == int(plain.num_batches_tracked)


def run_step(module: nn.Module, x: torch.Tensor, grad_out: torch.Tensor):
    """Forward + backward of ``(module(x) * grad_out).sum()``; returns (output, input grad)."""
    x = x.detach().clone().requires_grad_(True)
    out = module(x)
    (out * grad_out).sum().backward()
    return out.detach(), x.grad


_HOST_READS = ("item", "tolist", "numpy", "cpu", "new_tensor", "__bool__", "__int__",
               "__float__", "__index__")


class NoHostTransfers:
    """Records every way a tensor's value reaches Python, or host data reaches a tensor: on a
    GPU each one waits for the device (a copy to or from the host synchronises the stream)."""

    def __init__(self, monkeypatch):
        self.calls = []
        for name in _HOST_READS:
            monkeypatch.setattr(torch.Tensor, name, self._spy(name, getattr(torch.Tensor, name)))
        for name in ("tensor", "as_tensor"):
            monkeypatch.setattr(torch, name, self._spy(name, getattr(torch, name)))

    def _spy(self, name, original):
        def spy(*args, **kwargs):
            self.calls.append(name)
            return original(*args, **kwargs)
        return spy
