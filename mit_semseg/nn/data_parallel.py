"""Data parallelism over user-made per-device batches (the original training loader's format).

The training loader yields, per step, a *list* with one ready-made batch dict per device,
each possibly of a different image size. :class:`UserScatteredDataParallel` hands dict ``i``
to replica ``i`` unchanged (copying it to that replica's device) instead of splitting one
big batch, and gathers the outputs (0-dim losses become one entry per replica).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .replicate import DataParallelWithCallback
from .scatter_gather import async_copy_to, dict_gather

__all__ = [
    "UserScatteredDataParallel",
    "async_copy_to",
    "dict_gather",
]

logger = logging.getLogger(__name__)

_copy_streams: dict[int, Any] = {}


def _copy_stream(device: torch.device) -> Any:
    """A long-lived side stream per GPU for host-to-device copies (CUDA only)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _copy_streams:
        _copy_streams[index] = torch.cuda.Stream(index)
    return _copy_streams[index]


def _copy_to_cuda(obj: Any, device: torch.device) -> Any:
    """Copy ``obj`` on a side stream and make ``device``'s current stream wait for it."""
    with torch.cuda.device(device):
        main_stream = torch.cuda.current_stream(device)
        side_stream = _copy_stream(device)
        # The side stream must not start copying before the main stream has produced ``obj``.
        side_stream.wait_stream(main_stream)
        with torch.cuda.stream(side_stream):
            copied = async_copy_to(obj, device, main_stream=main_stream)
        main_stream.wait_stream(side_stream)
    return copied


class UserScatteredDataParallel(DataParallelWithCallback):
    """Data parallel module whose forward takes a list with one input dict per replica.

    ``model([dict_0, dict_1, ...])`` calls replica ``i`` as ``module(dict_i)`` and gathers
    the outputs with :func:`~mit_semseg.nn.scatter_gather.dict_gather` semantics.
    SyncBN layers inside are synchronised across replicas.

    * CUDA: one dict per entry of ``device_ids`` at most; each dict is copied to its GPU on a
      side stream (asynchronously from pinned memory).
    * CPU: with ``num_cpu_replicas=k`` at most ``k`` dicts; without it (and without CUDA)
      one CPU replica per dict. Each replica runs in its own thread.

    Args:
        module: network whose ``forward`` takes one dict.
        device_ids: CUDA devices (default: all visible ones; none on a CPU-only machine).
        output_device: where outputs are gathered.
        dim: concatenation dimension when gathering.
        num_cpu_replicas: force CPU replicas (mutually exclusive with ``device_ids``).
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
        super().__init__(module, device_ids, output_device, dim, num_cpu_replicas=num_cpu_replicas)
        if self.num_cpu_replicas is None and not self.device_ids:
            # No GPU: run one CPU replica per dict instead of nn.DataParallel's pass-through,
            # which would hand the whole list to the module.
            self.dim = dim
            self.output_device = torch.device("cpu")
            self.src_device_obj = torch.device("cpu")

    @property
    def cpu_mode(self) -> bool:
        return self.num_cpu_replicas is not None or not self.device_ids

    def _num_cpu_slots(self, inputs: tuple[Any, ...]) -> int:
        if self.num_cpu_replicas is not None:
            return self.num_cpu_replicas
        return len(inputs[0]) if inputs and isinstance(inputs[0], (list, tuple)) else 1

    def scatter(self, inputs: Any, kwargs: Any, device_ids: Sequence[Any]) -> Any:
        if kwargs:
            raise TypeError(
                "UserScatteredDataParallel takes no keyword arguments, got "
                f"{sorted(kwargs)}; put them inside the per-device dicts"
            )
        if len(inputs) != 1 or not isinstance(inputs[0], (list, tuple)):
            raise TypeError(
                "UserScatteredDataParallel expects exactly one positional argument, a list "
                f"with one input per device; got {len(inputs)} argument(s) of type(s) "
                f"{[type(x).__name__ for x in inputs]}"
            )
        per_device = list(inputs[0])
        if not per_device:
            raise ValueError("UserScatteredDataParallel got an empty list of inputs")
        if len(per_device) > len(device_ids):
            raise ValueError(
                f"got {len(per_device)} per-device inputs but only {len(device_ids)} "
                f"replica slot(s) ({'CPU replicas' if self.cpu_mode else 'device_ids'})"
            )
        if self.cpu_mode:
            scattered = [(item,) for item in per_device]
        else:
            scattered = [
                (_copy_to_cuda(item, torch.device("cuda", d)),)
                for item, d in zip(per_device, device_ids)
            ]
        return scattered, [{} for _ in scattered]

    def gather(self, outputs: Sequence[Any], output_device: Any) -> Any:
        return dict_gather(list(outputs), output_device, self.dim)
