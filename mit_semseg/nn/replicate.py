"""Replication with callbacks, a hang-free threaded ``parallel_apply`` and CPU replicas.

After a network is replicated, :func:`execute_replication_callbacks` calls
``__data_parallel_replicate__(ctx, copy_id)`` on every copy of every module that defines it,
with one shared ``ctx`` per module position and copy 0 first. That is how the copies of a
:class:`~mit_semseg.nn.sync_batchnorm.SynchronizedBatchNorm2d` find each other.

:func:`parallel_apply` runs one thread per replica (on GPUs or on CPU). When a replica raises,
every synchronisation point of that forward is aborted, so its peers fail within
milliseconds instead of waiting forever, and the first real error is re-raised.

:class:`DataParallelWithCallback` is ``nn.DataParallel`` with both of the above. With
``num_cpu_replicas=k`` it runs ``k`` replicas on CPU threads, which exercises the complete
synchronisation path on machines without a GPU.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .comm import SyncError
from .scatter_gather import dict_gather, split_batch

__all__ = [
    "CallbackContext",
    "DataParallelWithCallback",
    "execute_replication_callbacks",
    "parallel_apply",
    "patch_replication_callback",
    "replicate_on_cpu",
]

logger = logging.getLogger(__name__)


class CallbackContext:
    """Shared by all copies of one module position; callbacks store what they share here."""


def execute_replication_callbacks(modules: Sequence[nn.Module]) -> list[CallbackContext]:
    """Call ``__data_parallel_replicate__(ctx, copy_id)`` on every copy of every module.

    Args:
        modules: the replicas, ``modules[0]`` being the master copy.

    Returns:
        One context per module position (what the callbacks stored), also attached to each
        replica as ``_replication_contexts`` so :func:`parallel_apply` can abort them.
    """
    per_copy = [list(replica.modules()) for replica in modules]
    num_positions = len(per_copy[0])
    if any(len(mods) != num_positions for mods in per_copy):
        raise RuntimeError("replicas do not have the same module structure")
    contexts = [CallbackContext() for _ in range(num_positions)]
    for copy_id, mods in enumerate(per_copy):
        for ctx, module in zip(contexts, mods):
            callback = getattr(module, "__data_parallel_replicate__", None)
            if callback is not None:
                callback(ctx, copy_id)
    for replica in modules:
        replica._replication_contexts = contexts
    return contexts


def _shallow_copy(module: nn.Module, share_buffers: bool) -> nn.Module:
    replica = module.__new__(type(module))
    replica.__dict__ = module.__dict__.copy()
    # The very same Parameter objects: gradients of every replica accumulate into them.
    replica._parameters = module._parameters.copy()
    if share_buffers:
        replica._buffers = module._buffers.copy()
    else:
        # Like non-primary GPU replicas: in-place buffer updates there must not leak back.
        replica._buffers = type(module._buffers)(
            (k, None if b is None else b.clone()) for k, b in module._buffers.items()
        )
    replica._modules = module._modules.copy()
    return replica


def replicate_on_cpu(network: nn.Module, num_replicas: int) -> list[nn.Module]:
    """Make ``num_replicas`` CPU copies of ``network`` for threaded data parallelism.

    All copies share the network's parameters (so ``backward`` accumulates into the original
    ``.grad``). Copy 0 also shares its buffers (running statistics updated there persist, as
    on ``device_ids[0]`` in ``nn.DataParallel``); the other copies get private buffer clones.
    No replication callbacks are run here.
    """
    if num_replicas < 1:
        raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
    originals = list(network.modules())
    position = {id(m): i for i, m in enumerate(originals)}
    replicas = []
    for copy_id in range(num_replicas):
        copies = [_shallow_copy(m, share_buffers=copy_id == 0) for m in originals]
        for original, copy in zip(originals, copies):
            for name, child in original._modules.items():
                copy._modules[name] = None if child is None else copies[position[id(child)]]
        replicas.append(copies[0])
    return replicas


def _autocast_state() -> list[tuple[str, torch.dtype]]:
    return [
        (device_type, torch.get_autocast_dtype(device_type))
        for device_type in ("cpu", "cuda")
        if torch.is_autocast_enabled(device_type)
    ]


def parallel_apply(
    modules: Sequence[nn.Module],
    inputs: Sequence[Sequence[Any]],
    kwargs_tup: Sequence[dict[str, Any]] | None = None,
    devices: Sequence[int | torch.device | None] | None = None,
) -> list[Any]:
    """Run ``modules[i](*inputs[i], **kwargs_tup[i])`` in one thread per replica.

    Grad mode and autocast state of the caller are applied in every thread; for CUDA devices
    the thread runs under that device and the stream that is current for that device in the
    caller's thread (a new thread's own current stream is always the default stream, while
    the inputs were copied in order with the caller's). If a replica raises, all
    synchronisation contexts attached by :func:`execute_replication_callbacks` are aborted,
    every thread ends, and the first error that is not a mere consequence (a
    :class:`~mit_semseg.nn.comm.SyncError`) is re-raised.

    Args:
        modules: replicas.
        inputs: positional arguments per replica.
        kwargs_tup: keyword arguments per replica.
        devices: CUDA device per replica, or ``None`` for CPU.

    Returns:
        One output per replica.
    """
    num = len(modules)
    if len(inputs) != num:
        raise ValueError(f"got {len(inputs)} inputs for {num} replicas")
    kwargs_tup = list(kwargs_tup) if kwargs_tup is not None else [{} for _ in range(num)]
    devices = list(devices) if devices is not None else [None] * num
    contexts = getattr(modules[0], "_replication_contexts", None) or []
    masters = [ctx.sync_master for ctx in contexts if hasattr(ctx, "sync_master")]
    grad_enabled = torch.is_grad_enabled()
    autocast = _autocast_state()
    streams = [_caller_stream(device) for device in devices]
    results: list[Any] = [None] * num
    errors: list[BaseException | None] = [None] * num

    def work(index: int) -> None:
        try:
            torch.set_grad_enabled(grad_enabled)
            with _device_scope(devices[index], streams[index]), _autocast_scope(autocast):
                results[index] = modules[index](*inputs[index], **kwargs_tup[index])
        except BaseException as exc:  # noqa: B036 - re-raised in the caller's thread
            errors[index] = exc
            reason = f"replica {index} raised {type(exc).__name__}: {exc}"
            for master in masters:
                master.abort(reason)
        finally:
            for master in masters:
                master.depart(index)

    if num == 1:
        work(0)
    else:
        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(num)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    failed = [i for i, e in enumerate(errors) if e is not None]
    if failed:
        primary = next((i for i in failed if not isinstance(errors[i], SyncError)), failed[0])
        error = errors[primary]
        if hasattr(error, "add_note"):
            error.add_note(f"(raised in data-parallel replica {primary} of {num})")
        raise error
    return results


def _cuda_device(device: int | torch.device | None) -> torch.device | None:
    if device is None:
        return None
    device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    return device if device.type == "cuda" else None


def _caller_stream(device: int | torch.device | None) -> Any:
    """The current stream of a CUDA ``device`` in the calling thread (None for CPU)."""
    device = _cuda_device(device)
    return None if device is None else torch.cuda.current_stream(device)


class _device_scope:
    """``torch.cuda.device`` + a given stream for CUDA devices; nothing for CPU."""

    def __init__(self, device: int | torch.device | None, stream: Any = None):
        self._device = _cuda_device(device)
        self._stream = stream
        self._stack: list[Any] = []

    def __enter__(self) -> None:
        if self._device is None:
            return
        managers = [torch.cuda.device(self._device)]
        if self._stream is not None:
            managers.append(torch.cuda.stream(self._stream))
        for manager in managers:
            manager.__enter__()
            self._stack.append(manager)

    def __exit__(self, *exc: Any) -> None:
        while self._stack:
            self._stack.pop().__exit__(*exc)


class _autocast_scope:
    def __init__(self, state: list[tuple[str, torch.dtype]]):
        self._managers = [torch.autocast(device_type, dtype=dtype) for device_type, dtype in state]

    def __enter__(self) -> None:
        for manager in self._managers:
            manager.__enter__()

    def __exit__(self, *exc: Any) -> None:
        for manager in reversed(self._managers):
            manager.__exit__(*exc)


class DataParallelWithCallback(nn.DataParallel):
    """``nn.DataParallel`` that runs replication callbacks (SyncBN) and never deadlocks.

    Two modes:

    * CUDA (``device_ids`` or all visible GPUs): exactly ``nn.DataParallel``, plus
      :func:`execute_replication_callbacks` after replication and :func:`parallel_apply`
      with error propagation.
    * CPU (``num_cpu_replicas=k``): inputs are split along ``dim`` into at most ``k`` chunks
      (sizes differ by at most one), the module is replicated on CPU sharing its parameters,
      and every replica runs in its own thread. Outputs are gathered with
      :func:`~mit_semseg.nn.scatter_gather.dict_gather` (0-dim tensors become vectors).

    Without CUDA and without ``num_cpu_replicas`` it is a pass-through to the module, as
    ``nn.DataParallel`` is, and no synchronisation happens.

    Args:
        module: network to parallelise (on ``device_ids[0]``, or on CPU in CPU mode).
        device_ids: CUDA devices (default: all).
        output_device: where outputs are gathered (default ``device_ids[0]``; CPU in CPU mode).
        dim: batch dimension.
        num_cpu_replicas: number of CPU replicas; mutually exclusive with ``device_ids``.
    """

    def __init__(
        self,
        module: nn.Module,
        device_ids: Sequence[int | torch.device] | None = None,
        output_device: int | torch.device | None = None,
        dim: int = 0,
        *,
        num_cpu_replicas: int | None = None,
    ):
        if num_cpu_replicas is None:
            super().__init__(module, device_ids, output_device, dim)
            self.num_cpu_replicas = None
            return
        if num_cpu_replicas < 1:
            raise ValueError(f"num_cpu_replicas must be >= 1, got {num_cpu_replicas}")
        if device_ids:
            raise ValueError("pass either CUDA device_ids or num_cpu_replicas, not both")
        on_other = sorted({str(t.device) for t in (*module.parameters(), *module.buffers())
                           if t.device.type != "cpu"})
        if on_other:
            raise RuntimeError(f"num_cpu_replicas needs the module on CPU, found {on_other}")
        # Skip nn.DataParallel.__init__: it would claim every visible GPU.
        nn.Module.__init__(self)
        self.num_cpu_replicas = num_cpu_replicas
        self.module = module
        self.device_ids = []
        self.dim = dim
        self.output_device = torch.device("cpu")
        self.src_device_obj = torch.device("cpu")

    @property
    def cpu_mode(self) -> bool:
        """True when replicas run on CPU threads."""
        return self.num_cpu_replicas is not None

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        if not self.cpu_mode:
            return super().forward(*inputs, **kwargs)
        slots = list(range(self._num_cpu_slots(inputs)))
        inputs, kwargs = self.scatter(inputs, kwargs, slots)
        replicas = self.replicate(self.module, slots[: len(inputs)])
        outputs = self.parallel_apply(replicas, inputs, kwargs)
        return self.gather(outputs, self.output_device)

    def _num_cpu_slots(self, inputs: tuple[Any, ...]) -> int:
        return self.num_cpu_replicas

    def scatter(self, inputs: Any, kwargs: Any, device_ids: Sequence[Any]) -> Any:
        if not self.cpu_mode:
            return super().scatter(inputs, kwargs, device_ids)
        return split_batch(inputs, kwargs or {}, len(device_ids), self.dim)

    def replicate(self, module: nn.Module, device_ids: Sequence[Any]) -> list[nn.Module]:
        if self.cpu_mode:
            replicas = replicate_on_cpu(module, len(device_ids))
        else:
            replicas = super().replicate(module, device_ids)
        execute_replication_callbacks(replicas)
        return replicas

    def parallel_apply(self, replicas: Sequence[nn.Module], inputs: Any, kwargs: Any) -> list:
        devices = None if self.cpu_mode else self.device_ids[: len(replicas)]
        return parallel_apply(replicas, inputs, kwargs, devices)

    def gather(self, outputs: Sequence[Any], output_device: Any) -> Any:
        if not self.cpu_mode:
            return super().gather(outputs, output_device)
        return dict_gather(list(outputs), output_device, self.dim)


def patch_replication_callback(data_parallel: nn.DataParallel) -> None:
    """Make an existing ``nn.DataParallel`` run replication callbacks, in place.

    Its ``replicate`` is wrapped to call :func:`execute_replication_callbacks` and its
    ``parallel_apply`` is replaced by the hang-free :func:`parallel_apply`. Equivalent to
    constructing a :class:`DataParallelWithCallback` in the first place.
    """
    if not isinstance(data_parallel, nn.DataParallel):
        raise TypeError(f"expected an nn.DataParallel, got {type(data_parallel).__name__}")
    if isinstance(data_parallel, DataParallelWithCallback):
        return
    original_replicate = data_parallel.replicate

    def replicate_with_callbacks(module: nn.Module, device_ids: Sequence[Any]) -> list:
        replicas = original_replicate(module, device_ids)
        execute_replication_callbacks(replicas)
        return replicas

    def apply_in_threads(replicas: Sequence[nn.Module], inputs: Any, kwargs: Any) -> list:
        devices = data_parallel.device_ids[: len(replicas)] or None
        return parallel_apply(replicas, inputs, kwargs, devices)

    data_parallel.replicate = replicate_with_callbacks
    data_parallel.parallel_apply = apply_in_threads
