"""Device-agnostic helpers to split inputs between replicas, copy them and gather outputs."""

from __future__ import annotations

import collections.abc as abc
from typing import Any, Union

import torch
from torch import Tensor

__all__ = ["async_copy_to", "dict_gather", "split_batch"]

Device = Union[int, str, torch.device]


def _as_device(dev: Device) -> torch.device:
    # A bare integer means a CUDA device index, as in the original API.
    if isinstance(dev, int):
        return torch.device("cuda", dev)
    return torch.device(dev)


def _rebuild_mapping(template: abc.Mapping, items: list[tuple[Any, Any]]) -> abc.Mapping:
    """A mapping of ``template``'s type holding ``items`` (plain dict if the type cannot)."""
    try:
        return type(template)(items)
    except TypeError:
        return dict(items)


def async_copy_to(obj: Any, dev: Device, main_stream: Any | None = None) -> Any:
    """Copy every tensor inside ``obj`` (nested dicts / lists / tuples) to device ``dev``.

    Copies are non-blocking. If ``main_stream`` (a CUDA stream) is given, each copied CUDA
    tensor is marked as used by it, so its memory is not reused before that stream is done.
    Non-tensor leaves (strings, numbers, None) are returned unchanged.

    Args:
        obj: tensor or container of tensors.
        dev: CUDA index, device string or ``torch.device``.
        main_stream: stream that will consume the copies (CUDA only).
    """
    device = _as_device(dev)
    if isinstance(obj, Tensor):
        out = obj.to(device, non_blocking=True)
        if main_stream is not None and out.is_cuda:
            out.record_stream(main_stream)
        return out
    if isinstance(obj, abc.Mapping):
        return _rebuild_mapping(obj, [(k, async_copy_to(v, device, main_stream))
                                      for k, v in obj.items()])
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(async_copy_to(v, device, main_stream) for v in obj))
    if isinstance(obj, abc.Sequence) and not isinstance(obj, (str, bytes)):
        return type(obj)(async_copy_to(v, device, main_stream) for v in obj)
    return obj


def dict_gather(outputs: list[Any], target_device: Device, dim: int = 0) -> Any:
    """Gather one output per replica into a single output on ``target_device``.

    Tensors are concatenated along ``dim``; 0-dim tensors (a loss, an accuracy) become a
    vector with one entry per replica. Dicts and sequences are gathered element-wise (all
    replicas must return the same structure); ``None`` stays ``None``; any other value becomes
    the list of the replicas' values. The copies are differentiable.

    Args:
        outputs: one output per replica.
        target_device: where the gathered tensors live.
        dim: concatenation dimension.
    """
    device = _as_device(target_device)
    first = outputs[0]
    if isinstance(first, Tensor):
        if not all(isinstance(o, Tensor) for o in outputs):
            raise TypeError("replicas returned a tensor and a non-tensor at the same position")
        parts = [o.to(device) for o in outputs]
        if first.dim() == 0:
            return torch.stack(parts)
        return torch.cat(parts, dim=dim)
    if first is None:
        return None
    if isinstance(first, abc.Mapping):
        keys = list(first.keys())
        for o in outputs[1:]:
            if not isinstance(o, abc.Mapping) or list(o.keys()) != keys:
                raise ValueError(f"replicas returned dicts with different keys: {keys} vs "
                                 f"{list(o.keys()) if isinstance(o, abc.Mapping) else o!r}")
        return _rebuild_mapping(first, [(k, dict_gather([o[k] for o in outputs], device, dim))
                                        for k in keys])
    if isinstance(first, (list, tuple)):
        if any(len(o) != len(first) for o in outputs):
            raise ValueError("replicas returned sequences of different lengths")
        gathered = [dict_gather(list(items), device, dim) for items in zip(*outputs)]
        if hasattr(first, "_fields"):  # namedtuple
            return type(first)(*gathered)
        return type(first)(gathered)
    return list(outputs)


def _split_obj(obj: Any, num: int, dim: int) -> list[Any]:
    if isinstance(obj, Tensor):
        return list(torch.tensor_split(obj, num, dim=dim))
    if isinstance(obj, abc.Mapping):
        columns = {k: _split_obj(v, num, dim) for k, v in obj.items()}
        return [_rebuild_mapping(obj, [(k, columns[k][i]) for k in obj]) for i in range(num)]
    if isinstance(obj, (list, tuple)):
        columns = [_split_obj(v, num, dim) for v in obj]
        rows = [list(row) for row in zip(*columns)] if columns else [[] for _ in range(num)]
        if hasattr(obj, "_fields"):
            return [type(obj)(*row) for row in rows]
        return [type(obj)(row) for row in rows]
    return [obj] * num


def _batch_sizes(obj: Any, dim: int) -> list[int]:
    if isinstance(obj, Tensor):
        return [obj.size(dim)] if obj.dim() > dim else []
    if isinstance(obj, abc.Mapping):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [s for v in obj for s in _batch_sizes(v, dim)]
    return []


def split_batch(
    inputs: tuple[Any, ...], kwargs: dict[str, Any], num: int, dim: int = 0
) -> tuple[list[tuple[Any, ...]], list[dict[str, Any]]]:
    """Split positional and keyword inputs into at most ``num`` chunks along ``dim``.

    Tensors (also inside dicts / lists / tuples) are split with ``torch.tensor_split``, so
    chunk sizes differ by at most one (7 over 3 -> 3/2/2); other values are repeated. When the
    batch is smaller than ``num``, only ``batch`` chunks are made, so no replica gets an empty
    input.

    Returns:
        ``(inputs_per_chunk, kwargs_per_chunk)``, lists of equal length.
    """
    sizes = _batch_sizes((inputs, kwargs), dim)
    if sizes:
        num = max(1, min(num, min(sizes)))
    split_inputs = _split_obj(tuple(inputs), num, dim)
    split_kwargs = _split_obj(dict(kwargs), num, dim)
    return [tuple(x) for x in split_inputs], [dict(x) for x in split_kwargs]
