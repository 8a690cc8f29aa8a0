"""Synchronised BatchNorm for ``torch.distributed`` (DDP, ``torchrun``).

``nn.SyncBatchNorm`` only accepts GPU tensors, and DDP refuses CPU modules containing it (or
any subclass of it). :class:`DistributedSyncBatchNorm` is therefore a plain ``_BatchNorm``
subclass that synchronises through ``torch.distributed`` collectives, so it works with gloo
on CPU as well as with nccl on GPUs:

* forward (training): one ``all_gather`` of every rank's per-channel (count, mean, biased
  variance); each rank combines them identically (Chan's formula), so running statistics
  are bitwise equal on all ranks;
* backward: one ``all_reduce`` of the gradient of those gathered statistics.

Without an initialised process group (or with a single rank) it behaves as a local
BatchNorm. Eval mode issues no collectives. Ranks may hold empty batches, but every rank
must call every synchronised layer the same number of times (as with ``nn.SyncBatchNorm``).
Joining and leaving the process group: :mod:`mit_semseg.engine.distributed`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .sync_batchnorm import (
    _check_count,
    _SynchronizedBatchNorm,
    batch_norm_with_stats,
    check_eps_mode,
    combine_moments,
    combined_stats_backward,
    copy_batchnorm_state,
    inverse_std,
    local_moments,
    update_running_stats,
)

__all__ = ["DistributedSyncBatchNorm", "convert_sync_batchnorm", "revert_sync_batchnorm"]


class _DistributedCombinedStats(torch.autograd.Function):
    """Mean, inverse std and variance of the whole distributed batch from each rank's moments.

    Forward: one ``all_gather`` of every rank's (count, mean, biased variance), combined
    identically on every rank. Backward: one ``all_reduce`` of the gradients w.r.t. the
    combined ``(mean, invstd)``, i.e. their total over all ranks, followed by the same
    hand-written backward the one-process SyncBN runs (:func:`combined_stats_backward`), so
    ``torchrun`` and ``--gpus cpuxK`` compute bitwise equal gradients for two devices.
    """

    @staticmethod
    def forward(ctx: Any, mean: Tensor, var: Tensor, count: int, eps: float, eps_mode: str,
                group: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        channels = mean.numel()
        # the count enters as a fill value, not as host data: copying host data to a GPU
        # (new_tensor) waits for the device in every layer of every step
        local = torch.cat([mean.new_full((1,), count), mean, var])  # (1 + 2C,)
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, local, group=group)
        gathered = torch.stack(parts)  # (world, 1 + 2C)
        counts = gathered[:, 0].contiguous()
        means = gathered[:, 1:1 + channels].contiguous()
        variances = gathered[:, 1 + channels:].contiguous()
        total_mean, total_var = combine_moments(counts, means, variances)
        invstd = inverse_std(total_var, eps, eps_mode)
        ctx.save_for_backward(counts, means, total_mean, total_var, invstd)
        ctx.eps, ctx.eps_mode, ctx.group = eps, eps_mode, group
        ctx.rank = dist.get_rank(group)
        total = counts.sum()
        ctx.mark_non_differentiable(total_var, total)
        return total_mean, invstd, total_var, total

    @staticmethod
    def backward(ctx: Any, grad_mean: Tensor, grad_invstd: Tensor, _grad_var: Any,
                 _grad_total: Any) -> tuple[Tensor | None, ...]:
        counts, means, mean, var, invstd = ctx.saved_tensors
        # every rank's loss depends on the combined statistics: add up their gradients
        grads = torch.cat([grad_mean, grad_invstd]).contiguous()
        dist.all_reduce(grads, op=dist.ReduceOp.SUM, group=ctx.group)
        grad_mean, grad_invstd = grads.split(mean.numel())
        grad_means, grad_variances = combined_stats_backward(
            counts, means, mean, var, invstd, grad_mean, grad_invstd, ctx.eps, ctx.eps_mode)
        return grad_means[ctx.rank], grad_variances[ctx.rank], None, None, None, None


def _group_size(group: Any) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


class DistributedSyncBatchNorm(_BatchNorm):
    """BatchNorm over the whole distributed batch, for CPU (gloo) and GPU (nccl) alike.

    Accepts inputs of shape (N, C, *). Same ``state_dict`` keys and running-statistics
    semantics as ``nn.BatchNorm``.

    Args:
        num_features: number of channels C.
        eps: added to the variance (``"plus"``, as ``nn.SyncBatchNorm``) or its lower bound
            (``"clamp"``, as the original SynchronizedBatchNorm) for batch statistics.
        momentum: running-average factor; ``None`` for a cumulative average.
        affine: learn a per-channel weight and bias.
        track_running_stats: keep running statistics.
        process_group: group to synchronise over (default: the whole world).
        eps_mode: ``"plus"`` or ``"clamp"``.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        eps_mode: str = "plus",
    ):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.process_group = process_group
        self.eps_mode = check_eps_mode(eps_mode)

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eps_mode={self.eps_mode!r}"

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if not (self.training or self.running_mean is None):
            return F.batch_norm(
                input, self.running_mean, self.running_var, self.weight, self.bias,
                False, 0.0, self.eps,
            )
        count, mean, var = local_moments(input)
        world = _group_size(self.process_group) if self.training else 1
        if world == 1:
            _check_count(count, 1)
            update_running_stats(self, mean, var, count)
            invstd = inverse_std(var, self.eps, self.eps_mode)
            return batch_norm_with_stats(input, mean, invstd, self.weight, self.bias)
        if torch.is_grad_enabled() and not mean.requires_grad:
            # An empty rank's statistics are constants, but its backward must still join
            # the all_reduce of the other ranks, or they would wait for it forever.
            mean, var = mean.requires_grad_(True), var.requires_grad_(True)
        mean, invstd, var, total = _DistributedCombinedStats.apply(
            mean, var, count, self.eps, self.eps_mode, self.process_group)
        if count <= 1:  # only then can the total be too small; avoids a host sync per layer
            _check_count(int(total.item()), world)
        update_running_stats(self, mean, var, total)
        return batch_norm_with_stats(input, mean, invstd, self.weight, self.bias)


def convert_sync_batchnorm(
    module: nn.Module, process_group: Any = None, eps_mode: str = "plus"
) -> nn.Module:
    """Replace every BatchNorm in ``module`` (any dims) by :class:`DistributedSyncBatchNorm`.

    ``nn.BatchNorm{1,2,3}d``, ``nn.SyncBatchNorm`` and ``SynchronizedBatchNorm*`` are all
    converted; parameters and buffers are shared with the originals (nothing is copied) and
    the train/eval mode is kept. Works with or without an initialised process group.

    Args:
        module: network (converted in place where possible).
        process_group: group the new layers synchronise over (default: world).
        eps_mode: see :class:`DistributedSyncBatchNorm`.

    Returns:
        The converted module (a new object if ``module`` itself is a BatchNorm).
    """
    if isinstance(module, _BatchNorm) and not isinstance(module, DistributedSyncBatchNorm):
        new = DistributedSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats, process_group, eps_mode=eps_mode,
        )
        new._plain_class = _plain_class_of(module)
        return copy_batchnorm_state(module, new)
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child, process_group, eps_mode)
        if converted is not child:
            setattr(module, name, converted)
    return module


def _plain_class_of(module: _BatchNorm) -> type:
    for plain in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        if isinstance(module, plain):
            return plain
    return getattr(module, "_plain_class", nn.BatchNorm2d)


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Inverse of :func:`convert_sync_batchnorm`: plain ``nn.BatchNorm*d`` layers again.

    Converts :class:`DistributedSyncBatchNorm`, ``nn.SyncBatchNorm`` and the
    ``SynchronizedBatchNorm*`` classes. The dimensionality is the one the layer was converted
    from when known, else 2d. Parameters and buffers are shared.
    """
    if isinstance(module, (DistributedSyncBatchNorm, nn.SyncBatchNorm, _SynchronizedBatchNorm)):
        plain = _plain_class_of(module)
        new = plain(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats,
        )
        return copy_batchnorm_state(module, new)
    for name, child in module.named_children():
        reverted = revert_sync_batchnorm(child)
        if reverted is not child:
            setattr(module, name, reverted)
    return module
