"""The checkpoint format every model shares: the original ``mit_semseg`` 1.0.0's state-dict
layout, and strict loading of weight files.

The original used a synchronized BatchNorm that kept three bookkeeping buffers per layer
(``_tmp_running_mean``, ``_tmp_running_var``, ``_running_iter``), with
``running_mean == _tmp_running_mean / _running_iter`` (likewise for the variance). Its
checkpoints therefore hold nine entries per BatchNorm where ``nn.BatchNorm2d`` has six, and the
released ones lack ``num_batches_tracked`` (saved by an older PyTorch).

:func:`attach_upstream_bn_buffers` installs two hooks on a *top-level* module (an encoder or a
decoder; the registries do it for every module they build). Because the hooks walk the
submodules every time they run, they keep working when BatchNorm layers are replaced later
(e.g. by a synchronized BatchNorm class), after ``copy.deepcopy`` and in DataParallel replicas:

* ``state_dict()`` emits the three extra entries for every ``_BatchNorm`` (``_tmp_*`` equal to
  the running statistics and ``_running_iter == 1``, which the original reads back unchanged);
* ``load_state_dict()`` drops those entries when present and fills in a missing
  ``num_batches_tracked``, so ``strict=True`` accepts checkpoints with or without them.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "OPTIONAL_ENTRIES",
    "UPSTREAM_BN_EXTRAS",
    "attach_upstream_bn_buffers",
    "StateDictMismatch",
    "load_weights",
    "read_state_dict",
    "required_entries",
    "state_dict_mismatch",
    "strip_module_prefix",
]

logger = logging.getLogger(__name__)

UPSTREAM_BN_EXTRAS = ("_tmp_running_mean", "_tmp_running_var", "_running_iter")
# entries a file may hold or lack: the extras above and BatchNorm's step counter
OPTIONAL_ENTRIES = (*UPSTREAM_BN_EXTRAS, "num_batches_tracked")

_ATTACHED_FLAG = "_mit_semseg_upstream_bn_hooks"


def _tracking_batchnorms(module: nn.Module, prefix: str) -> Iterator[tuple[str, _BatchNorm]]:
    """(key prefix, layer) for every BatchNorm below ``module`` that keeps running stats."""
    for name, sub in module.named_modules():
        if isinstance(sub, _BatchNorm) and sub.running_mean is not None:
            yield prefix + (name + "." if name else ""), sub


def _emit_extras(
    module: nn.Module, state_dict: MutableMapping[str, Any], prefix: str, local_metadata: Any
) -> None:
    additions: dict[str, dict[str, torch.Tensor]] = {}
    for bn_prefix, bn in _tracking_batchnorms(module, prefix):
        if bn_prefix + "running_mean" not in state_dict:
            continue
        extras = {}
        for name in UPSTREAM_BN_EXTRAS:
            if bn_prefix + name in state_dict or name in bn._buffers:
                continue  # the layer has real buffers of that name; they were saved already
            if name == "_running_iter":
                mean = bn.running_mean
                extras[name] = torch.ones(1, dtype=mean.dtype, device=mean.device)
            else:
                source = state_dict[bn_prefix + name.replace("_tmp_", "")]
                extras[name] = source.detach()
        if extras:
            additions[bn_prefix] = extras
    if not additions:
        return
    # Rebuild this module's (trailing) part of the dict so each layer's extras follow its own
    # buffers, in the original's order.
    own_keys = [key for key in state_dict if key.startswith(prefix)]
    ordered = OrderedDict()
    for key in own_keys:
        ordered[key] = state_dict.pop(key)
    for key, value in ordered.items():
        state_dict[key] = value
        for bn_prefix, extras in additions.items():
            last = "num_batches_tracked" if bn_prefix + "num_batches_tracked" in ordered else (
                "running_var"
            )
            if key == bn_prefix + last:
                for name, tensor in extras.items():
                    state_dict[bn_prefix + name] = tensor


def _accept_upstream_layout(
    module: nn.Module,
    state_dict: MutableMapping[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    for bn_prefix, bn in _tracking_batchnorms(module, prefix):
        for name in UPSTREAM_BN_EXTRAS:
            if name not in bn._buffers:
                state_dict.pop(bn_prefix + name, None)
        counter = bn_prefix + "num_batches_tracked"
        if counter not in state_dict and bn.num_batches_tracked is not None:
            has_layer = any(key.startswith(bn_prefix) for key in state_dict)
            if has_layer:  # leave wholly missing layers to strict loading to report
                state_dict[counter] = bn.num_batches_tracked.detach().clone()


def attach_upstream_bn_buffers(module: nn.Module) -> nn.Module:
    """Make ``module``'s state dict use the original's BatchNorm layout (idempotent).

    Args:
        module: top-level network (encoder or decoder); its BatchNorm layers may be replaced
            later, the hooks look them up on every call.

    Returns:
        ``module`` itself.
    """
    if getattr(module, _ATTACHED_FLAG, False):
        return module
    module.register_state_dict_post_hook(_emit_extras)
    module.register_load_state_dict_pre_hook(_accept_upstream_layout)
    setattr(module, _ATTACHED_FLAG, True)
    return module


def strip_module_prefix(state_dict: Mapping[str, Any], source: str = "") -> dict[str, Any]:
    """Remove a leading ``module.`` (left by DataParallel/DDP wrappers) from every key.

    Args:
        state_dict: loaded checkpoint.
        source: where it came from, for the log message.

    Returns:
        A new dict; the same keys when no key carries the prefix.
    """
    keys = list(state_dict)
    if keys and all(key.startswith("module.") for key in keys):
        logger.info("stripping the 'module.' prefix from the keys of %s", source or "a state dict")
        return {key[len("module."):]: value for key, value in state_dict.items()}
    return dict(state_dict)


@dataclass(frozen=True)
class StateDictMismatch:
    """How a state dict differs from what ``module.load_state_dict(..., strict=True)`` needs.

    The optional entries (the three SyncBN extras and ``num_batches_tracked``) are ignored on
    both sides, as loading does.

    Attributes:
        missing: keys of the module the state dict lacks, sorted.
        unexpected: keys of the state dict the module lacks, sorted.
        shapes: ``key -> (shape in the state dict, shape in the module)`` for shared keys.
    """

    missing: list[str]
    unexpected: list[str]
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shapes)

    def describe(self, limit: int = 8) -> str:
        """One line: the first ``limit`` missing keys, unexpected keys and shape mismatches."""
        def preview(keys: list[str]) -> str:
            more = f" ... ({len(keys)} in all)" if len(keys) > limit else ""
            return f"[{', '.join(keys[:limit])}{more}]"

        resized = [f"{key} {given} vs {wanted}" for key, (given, wanted) in self.shapes.items()]
        return (f"missing keys {preview(self.missing)}, unexpected keys "
                f"{preview(self.unexpected)}, shape mismatches {preview(resized)}")

    def other_class_count(self, num_class: int) -> int | None:
        """The number of classes the state dict was trained for, when that is all that differs
        (every differing shape is a classifier's: another first dimension than ``num_class``);
        else None."""
        if self.missing or self.unexpected or not self.shapes:
            return None
        saved = {given[0] for given, wanted in self.shapes.values()}
        fits = all(wanted[0] == num_class and given[1:] == wanted[1:]
                   for given, wanted in self.shapes.values())
        return saved.pop() if fits and len(saved) == 1 else None


def required_entries(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``state_dict`` that strict loading needs: all but the optional ones (the
    original SyncBN's three extras and ``num_batches_tracked``)."""
    return {key: value for key, value in state_dict.items()
            if key.rsplit(".", 1)[-1] not in OPTIONAL_ENTRIES}


def state_dict_mismatch(module: nn.Module, state_dict: Mapping[str, Any]) -> StateDictMismatch:
    """What keeps ``state_dict`` from loading into ``module`` strictly (see
    :class:`StateDictMismatch`; false when it fits)."""
    own = module.state_dict()
    expected, given = set(required_entries(own)), set(required_entries(state_dict))
    shapes = {key: (tuple(getattr(state_dict[key], "shape", ())), tuple(own[key].shape))
              for key in sorted(expected & given)
              if tuple(getattr(state_dict[key], "shape", ())) != tuple(own[key].shape)}
    return StateDictMismatch(sorted(expected - given), sorted(given - expected), shapes)


def read_state_dict(path: str | os.PathLike, what: str = "weights") -> dict[str, torch.Tensor]:
    """The state dict saved in ``path`` (CPU tensors, ``module.`` prefix stripped).

    A file holding ``{"state_dict": ...}`` (as some ImageNet checkpoints do) gives the inner
    dict.

    Args:
        path: ``torch.save``d state dict.
        what: how error messages call the file (e.g. "resnet50 encoder weights").

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RuntimeError: the file is unreadable or holds no state dict; names the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt/foreign files
        raise RuntimeError(f"{what} file {path} is not a readable PyTorch weights file: {error}"
                           ) from error
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise RuntimeError(f"{what} file {path} holds a {type(state).__name__}, not a state dict")
    return strip_module_prefix(state, path)


def load_weights(module: nn.Module, path: str | os.PathLike, what: str = "weights") -> nn.Module:
    """Load a state-dict file into ``module`` strictly (in place).

    Accepts the original's checkpoints (SyncBN extras, missing ``num_batches_tracked``) and
    files saved from a DataParallel/DDP wrapper (``module.`` prefix, stripped and logged).

    Args:
        module: the network to fill.
        path: ``torch.save``d state dict.
        what: how error messages and the log call the file (e.g. "resnet50 encoder weights").

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RuntimeError: the file is unreadable or its keys/shapes do not match; names the file.
    """
    state = read_state_dict(path, what)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise RuntimeError(f"{what} file {path} does not fit {type(module).__name__}: {error}"
                           ) from error
    logger.info("loaded %s from %s", what, path)
    return module
