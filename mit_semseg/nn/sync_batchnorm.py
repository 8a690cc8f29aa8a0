"""Synchronised BatchNorm for ``DataParallel``-style replicas inside one process.

``SynchronizedBatchNorm{1,2,3}d`` are drop-in replacements for ``nn.BatchNorm{1,2,3}d``
(they *are* subclasses of them, with the same ``state_dict`` keys). When the module is
replicated by :class:`~mit_semseg.nn.replicate.DataParallelWithCallback` (on GPUs or on
CPU threads) or by an ``nn.DataParallel`` patched with ``patch_replication_callback``, every
replica normalises with the mean and variance of the *whole* batch, i.e. the concatenation
of all replicas' sub-batches, and gradients flow through those shared statistics.

Numerics:

* each replica computes its per-channel count, mean and (biased) variance; replica 0
  combines them with Chan's parallel formula. Sums of squares are never formed, so inputs
  with a large offset lose no precision;
* statistics are accumulated in float32 for float16/bfloat16 inputs (float64 stays float64);
  the output has the input's dtype and memory format;
* ``eps_mode="clamp"`` (default) normalises batch statistics with ``1/sqrt(max(var, eps))``
  as the original package did, ``eps_mode="plus"`` with ``1/sqrt(var + eps)`` as
  ``nn.BatchNorm`` does. Normalising with running statistics (eval mode) always uses
  ``var + eps``, which is what both the original and PyTorch do there, so checkpoints give
  identical evaluation results;
* running statistics follow ``nn.BatchNorm`` exactly: ``momentum`` (default 0.1, ``None`` =
  cumulative average), unbiased variance, ``num_batches_tracked``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .comm import DEFAULT_TIMEOUT, SlavePipe, SyncMaster
from .replicate import DataParallelWithCallback

__all__ = [
    "SynchronizedBatchNorm1d",
    "SynchronizedBatchNorm2d",
    "SynchronizedBatchNorm3d",
    "CombinedStats",
    "batch_norm_with_stats",
    "combine_moments",
    "combined_stats_backward",
    "convert_model",
    "local_moments",
    "update_running_stats",
]

logger = logging.getLogger(__name__)

EPS_MODES = ("clamp", "plus")


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype statistics are accumulated in: float32 for half types, else the input dtype."""
    return torch.promote_types(dtype, torch.float32)


def local_moments(x: Tensor) -> tuple[int, Tensor, Tensor]:
    """Per-channel count, mean and biased variance of ``x`` of shape (N, C, *).

    An empty batch gives zeros (it carries no weight when combined).
    """
    channels = x.shape[1]
    count = x.numel() // channels if channels else 0
    dtype = stats_dtype(x.dtype)
    if count == 0:
        zeros = torch.zeros(channels, dtype=dtype, device=x.device)
        return 0, zeros, zeros
    dims = [0] + list(range(2, x.dim()))
    var, mean = torch.var_mean(x.to(dtype), dim=dims, correction=0)
    return count, mean, var


def combine_moments(counts: Tensor, means: Tensor, variances: Tensor) -> tuple[Tensor, Tensor]:
    """Chan's combination of per-group moments (plain tensor ops, differentiable by autograd).

    Args:
        counts: (k,) number of values per group (zeros allowed).
        means: (k, C) per-group means.
        variances: (k, C) per-group biased variances.

    Returns:
        ``(mean, var)`` of the union, both (C,), ``var`` biased.
    """
    weights = counts.to(means.dtype).unsqueeze(1)  # (k, 1)
    total = weights.sum()
    mean = (weights * means).sum(0) / total
    m2 = (weights * (variances + (means - mean).pow(2))).sum(0)
    return mean, m2 / total


def inverse_std(var: Tensor, eps: float, eps_mode: str) -> Tensor:
    """``1/sqrt(max(var, eps))`` for ``"clamp"`` or ``1/sqrt(var + eps)`` for ``"plus"``."""
    if eps_mode == "clamp":
        return torch.rsqrt(var.clamp(min=eps))
    return torch.rsqrt(var + eps)


def combined_stats_backward(
    counts: Tensor, means: Tensor, mean: Tensor, var: Tensor, invstd: Tensor,
    grad_mean: Tensor, grad_invstd: Tensor, eps: float, eps_mode: str,
) -> tuple[Tensor, Tensor]:
    """Gradients w.r.t. every group's ``(mean, biased variance)`` of :class:`CombinedStats`.

    ``grad_mean``/``grad_invstd`` must already be the totals over every replica or rank that
    used the combined statistics. Written out by hand (instead of letting autograd trace
    :func:`combine_moments`) so that the one-process SyncBN and the torch.distributed one run
    the same operations in the same order and produce bitwise equal gradients; the term through
    which ``mean`` enters the variance is dropped because it is exactly zero
    (``sum_j w_j (mean_j - mean) = 0``), where autograd would add a rounding residue.

    Returns:
        ``(grad_means, grad_variances)``, both (k, C).
    """
    slope = -0.5 * invstd.pow(3)  # d invstd / d var
    if eps_mode == "clamp":
        slope = slope * (var > eps).to(slope.dtype)
    grad_var = grad_invstd * slope  # (C,)
    share = counts.to(means.dtype).unsqueeze(1) / counts.sum().to(means.dtype)  # (k, 1)
    grad_means = share * (grad_mean + 2.0 * grad_var * (means - mean))
    grad_variances = share * grad_var
    return grad_means, grad_variances


class CombinedStats(torch.autograd.Function):
    """``(mean, invstd, var)`` of the union of k groups, from their counts and moments.

    Used by the replicas of one process (:class:`_SynchronizedBatchNorm`); the distributed
    layer runs the same forward and :func:`combined_stats_backward` on every rank. ``var`` (the
    biased variance, for the running statistics) is not differentiable.
    """

    @staticmethod
    def forward(ctx: Any, counts: Tensor, means: Tensor, variances: Tensor, eps: float,
                eps_mode: str) -> tuple[Tensor, Tensor, Tensor]:
        mean, var = combine_moments(counts, means, variances)
        invstd = inverse_std(var, eps, eps_mode)
        ctx.save_for_backward(counts, means, mean, var, invstd)
        ctx.eps, ctx.eps_mode = eps, eps_mode
        ctx.mark_non_differentiable(var)
        return mean, invstd, var

    @staticmethod
    def backward(ctx: Any, grad_mean: Tensor, grad_invstd: Tensor, _grad_var: Tensor | None
                 ) -> tuple[Tensor | None, ...]:
        counts, means, mean, var, invstd = ctx.saved_tensors
        grad_means, grad_variances = combined_stats_backward(
            counts, means, mean, var, invstd, grad_mean, grad_invstd, ctx.eps, ctx.eps_mode)
        return None, grad_means, grad_variances, None, None


def _check_count(total: int, groups: int) -> None:
    if total <= 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got {total} value(s) in "
            f"total over {groups} replica(s)"
        )


class _NormalizeWithStats(torch.autograd.Function):
    """``y = (x - mean) * invstd * weight + bias`` with a hand-written, memory-light backward.

    Only ``x`` (plus the per-channel vectors) is saved; autograd would otherwise keep two
    full-size intermediates. The gradients w.r.t. ``mean`` and ``invstd`` flow on through
    autograd into the (possibly cross-replica) statistics computation.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None,
                bias: Tensor | None) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        scale = invstd if weight is None else invstd * weight.to(invstd.dtype)
        # Subtract the mean first: folding it into a shift (x * scale + shift) would cancel
        # catastrophically for inputs with a large offset.
        y = (x.to(mean.dtype) - mean.view(shape)) * scale.view(shape)
        if bias is not None:
            y = y + bias.to(y.dtype).view(shape)
        ctx.save_for_backward(x, mean, invstd, weight)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, mean, invstd, weight = ctx.saved_tensors
        need_x, need_mean, need_invstd, need_w, need_b = ctx.needs_input_grad
        shape = (1, -1) + (1,) * (x.dim() - 2)
        dims = [0] + list(range(2, x.dim()))
        dy = grad_out.to(mean.dtype)
        w = torch.ones_like(invstd) if weight is None else weight.to(invstd.dtype)
        grad_x = grad_mean = grad_invstd = grad_w = grad_b = None
        sum_dy = dy.sum(dims) if (need_mean or need_b) else None
        if need_invstd or need_w:
            sum_dy_xc = (dy * (x.to(mean.dtype) - mean.view(shape))).sum(dims)
            if need_invstd:
                grad_invstd = sum_dy_xc * w
            if need_w:
                grad_w = (sum_dy_xc * invstd).to(weight.dtype)
        if need_x:
            grad_x = (dy * (invstd * w).view(shape)).to(x.dtype)
        if need_mean:
            grad_mean = -sum_dy * invstd * w
        if need_b and ctx.bias_dtype is not None:
            grad_b = sum_dy.to(ctx.bias_dtype)
        return grad_x, grad_mean, grad_invstd, grad_w, grad_b


def batch_norm_with_stats(
    x: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None, bias: Tensor | None
) -> Tensor:
    """``(x - mean) * invstd * weight + bias`` per channel, computed in the statistics' dtype.

    Differentiable w.r.t. all tensor arguments. The result has ``x``'s dtype and memory
    format.
    """
    return _NormalizeWithStats.apply(x, mean, invstd, weight, bias)


def update_running_stats(bn: _BatchNorm, mean: Tensor, var: Tensor, total: int | Tensor) -> None:
    """Update ``bn``'s running statistics in place exactly as ``nn.BatchNorm`` does.

    Args:
        bn: the module whose buffers are updated (no-op if it does not track statistics).
        mean: (C,) batch mean.
        var: (C,) biased batch variance; converted to the unbiased one here.
        total: number of values per channel the statistics were computed from (a number,
            or a 0-dim tensor so that a device's statistics need no host sync).
    """
    if not bn.track_running_stats or bn.running_mean is None:
        return
    with torch.no_grad():
        factor = 0.0 if bn.momentum is None else bn.momentum
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:
                factor = 1.0 / float(bn.num_batches_tracked)
        unbiased = var.detach() * (total / (total - 1))
        for buf, value in ((bn.running_mean, mean.detach()), (bn.running_var, unbiased)):
            buf.mul_(1.0 - factor).add_(value.to(buf.dtype), alpha=factor)


def check_eps_mode(eps_mode: str) -> str:
    if eps_mode not in EPS_MODES:
        raise ValueError(f"eps_mode must be one of {EPS_MODES}, got {eps_mode!r}")
    return eps_mode


class _SynchronizedBatchNorm(_BatchNorm):
    """Shared implementation of ``SynchronizedBatchNorm{1,2,3}d``.

    Args:
        num_features: number of channels C.
        eps: added to (``"plus"``) or lower bound of (``"clamp"``) the variance.
        momentum: running-average factor; ``None`` for a cumulative average.
        affine: learn a per-channel weight and bias.
        track_running_stats: keep running mean/variance (else batch statistics are used in
            eval mode too).
        eps_mode: ``"clamp"`` (original package) or ``"plus"`` (``nn.BatchNorm``), see the
            module docstring.
        sync_timeout: seconds a replica waits for its peers before failing.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        eps_mode: str = "clamp",
        sync_timeout: float = DEFAULT_TIMEOUT,
    ):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.eps_mode = check_eps_mode(eps_mode)
        self.sync_timeout = sync_timeout
        # Set on replicas only, by __data_parallel_replicate__; the base module stays unsynced.
        self._sync_master: SyncMaster | None = None
        self._slave_pipe: SlavePipe | None = None

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eps_mode={self.eps_mode!r}"

    def __setstate__(self, state: dict) -> None:
        # Modules pickled before these attributes existed (or by other versions) still load.
        state.setdefault("eps_mode", "clamp")
        state.setdefault("sync_timeout", DEFAULT_TIMEOUT)
        state.setdefault("_sync_master", None)
        state.setdefault("_slave_pipe", None)
        super().__setstate__(state)

    def __data_parallel_replicate__(self, ctx: Any, copy_id: int) -> None:
        """Replication hook: copy 0 becomes the master, the others register with it."""
        if copy_id == 0:
            ctx.sync_master = SyncMaster(self._reduce_replica_moments, timeout=self.sync_timeout)
            self._sync_master = ctx.sync_master
            self._slave_pipe = None
        else:
            self._sync_master = None
            self._slave_pipe = ctx.sync_master.register_slave(copy_id)

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        use_batch_stats = self.training or self.running_mean is None
        if not use_batch_stats:
            return F.batch_norm(
                input, self.running_mean, self.running_var, self.weight, self.bias,
                False, 0.0, self.eps,
            )
        replicated = self._sync_master is not None or self._slave_pipe is not None
        if not replicated and self.eps_mode == "plus":
            # Exactly nn.BatchNorm (same kernel, same running-stat update).
            return super().forward(input)

        moments = local_moments(input)
        if self._sync_master is not None:
            mean, invstd = self._sync_master.run_master(moments)
        elif self._slave_pipe is not None:
            mean, invstd = self._slave_pipe.run_slave(moments)
        else:
            mean, invstd = self._reduce_replica_moments([(0, moments)])[0][1]
        return batch_norm_with_stats(input, mean, invstd, self.weight, self.bias)

    def _reduce_replica_moments(
        self, messages: list[tuple[int, tuple[int, Tensor, Tensor]]]
    ) -> list[tuple[int, tuple[Tensor, Tensor]]]:
        """Combine every replica's moments (runs in replica 0), update running stats, answer."""
        device = messages[0][1][1].device
        counts = [count for _, (count, _, _) in messages]
        total = sum(counts)
        _check_count(total, len(messages))
        means = torch.stack([m.to(device) for _, (_, m, _) in messages])
        variances = torch.stack([v.to(device) for _, (_, _, v) in messages])
        # filled on the device (no host-to-device copy, which would wait for the GPU)
        count_t = torch.stack([means.new_full((), count) for count in counts])
        mean, invstd, var = CombinedStats.apply(count_t, means, variances, self.eps,
                                                self.eps_mode)
        # Replica 0's buffers share storage with the wrapped module (DataParallel guarantees
        # this for device_ids[0]; the CPU replicas do it too), so the update persists. The
        # total as a tensor, like the distributed layer's, so both round alike.
        update_running_stats(self, mean, var, count_t.sum())
        return [
            (copy_id, (mean.to(m.device), invstd.to(m.device)))
            for copy_id, (_, m, _) in messages
        ]


class SynchronizedBatchNorm1d(_SynchronizedBatchNorm, nn.BatchNorm1d):
    """Synchronised ``nn.BatchNorm1d`` for (N, C) or (N, C, L) inputs. See the module docstring."""


class SynchronizedBatchNorm2d(_SynchronizedBatchNorm, nn.BatchNorm2d):
    """Synchronised ``nn.BatchNorm2d`` for (N, C, H, W) inputs. See the module docstring."""


class SynchronizedBatchNorm3d(_SynchronizedBatchNorm, nn.BatchNorm3d):
    """Synchronised ``nn.BatchNorm3d`` for (N, C, D, H, W) inputs. See the module docstring."""


_TO_SYNC = (
    (nn.BatchNorm1d, SynchronizedBatchNorm1d),
    (nn.BatchNorm2d, SynchronizedBatchNorm2d),
    (nn.BatchNorm3d, SynchronizedBatchNorm3d),
)


def _sync_class_for(module: nn.Module) -> type | None:
    if isinstance(module, _SynchronizedBatchNorm):
        return None
    for plain, synced in _TO_SYNC:
        if isinstance(module, plain):
            return synced
    return None


def copy_batchnorm_state(src: _BatchNorm, dst: _BatchNorm) -> _BatchNorm:
    """Make ``dst`` use ``src``'s parameters and buffers (shared, not copied) and mode."""
    if src.affine:
        dst.weight = src.weight
        dst.bias = src.bias
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        setattr(dst, name, getattr(src, name))
    dst.train(src.training)
    return dst


def convert_model(module: nn.Module, **sync_kwargs: Any) -> nn.Module:
    """Replace every ``nn.BatchNorm{1,2,3}d`` in ``module`` by its synchronised counterpart.

    Parameters and buffers are shared with the originals. An ``nn.DataParallel`` is rewrapped
    as :class:`~mit_semseg.nn.replicate.DataParallelWithCallback` on the same devices.

    Args:
        module: network (or ``nn.DataParallel``) to convert; converted in place where possible.
        **sync_kwargs: ``eps_mode`` / ``sync_timeout`` for the new layers.

    Returns:
        The converted module (a new object if ``module`` itself was a BatchNorm or wrapper).
    """
    if isinstance(module, nn.DataParallel) and not isinstance(module, DataParallelWithCallback):
        inner = convert_model(module.module, **sync_kwargs)
        if not module.device_ids:
            return DataParallelWithCallback(inner)
        return DataParallelWithCallback(
            inner, device_ids=module.device_ids, output_device=module.output_device, dim=module.dim
        )
    synced = _sync_class_for(module)
    if synced is not None:
        new = synced(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats, **sync_kwargs,
        )
        return copy_batchnorm_state(module, new)
    for name, child in module.named_children():
        converted = convert_model(child, **sync_kwargs)
        if converted is not child:
            setattr(module, name, converted)
    return module

