"""Configuration: defaults, loading with clear errors, and validation.

``cfg`` is the original package's mutable global node, kept so that ``from mit_semseg.config
import cfg`` keeps working. Scripts use :func:`load_config` instead, which returns a validated,
frozen copy and never touches ``cfg``.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import yaml
from yacs.config import CfgNode

from .defaults import _C
from .packaged import packaged_configs, resolve_config_file

__all__ = [
    "RESUME_MAY_CHANGE",
    "cfg",
    "CfgNode",
    "ConfigError",
    "get_cfg_defaults",
    "load_config",
    "packaged_configs",
    "resolve_config_file",
    "resume_changes",
    "validate_config",
]

cfg = _C.clone()

_AMP_CHOICES = ("", "bf16", "fp16")
_BACKEND_CHOICES = ("auto", "nccl", "gloo")
_PREFLIGHT_CHOICES = ("headers", "full", "off")
_MODEL_BACKEND_CHOICES = ("torch", "onnxruntime")
_MODEL_PRECISION_CHOICES = ("fp32", "int8")
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class ConfigError(ValueError):
    """A configuration file or override is invalid (unknown key, wrong type or bad value)."""


def get_cfg_defaults() -> CfgNode:
    """Return a mutable copy of the defaults (changing it does not affect other callers)."""
    return _C.clone()


def _all_keys(node: CfgNode, prefix: str = "") -> list[str]:
    keys = []
    for name, value in node.items():
        full = prefix + name
        keys.extend(_all_keys(value, full + ".") if isinstance(value, CfgNode) else [full])
    return keys


def _flatten(tree: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """``{'A': {'b': 1}}`` -> ``[('A.b', 1)]`` (a section given as a leaf stays a leaf)."""
    pairs = []
    for name, value in tree.items():
        full = f"{prefix}{name}"
        if isinstance(value, dict):
            pairs.extend(_flatten(value, full + "."))
        else:
            pairs.append((full, value))
    return pairs


def _coerce(value: Any, default: Any, key: str, source: str) -> Any:
    """Convert ``value`` to the type of ``default`` where that is lossless, else raise."""
    if isinstance(default, bool) or isinstance(value, bool):
        if type(value) is type(default):
            return value
    elif isinstance(default, float) and isinstance(value, int):
        return float(value)  # "TRAIN.lr_encoder 1" means 1.0
    elif isinstance(default, tuple) and isinstance(value, list):
        return tuple(value)
    elif type(value) is type(default):
        return value
    hint = ""
    if isinstance(default, tuple) and not isinstance(value, (tuple, list)):
        hint = f' (write a tuple, e.g. "({value},)")'
    raise ConfigError(
        f"{source}: config key {key} expects {type(default).__name__} "
        f"(default {default!r}) but got {type(value).__name__} {value!r}{hint}"
    )


def _merge_pairs(node: CfgNode, pairs: Iterable[tuple[str, Any]], source: str) -> None:
    valid = _all_keys(node)
    for key, raw in pairs:
        parts = key.split(".")
        parent = node
        for part in parts[:-1]:
            parent = parent.get(part) if isinstance(parent, CfgNode) else None
        if not isinstance(parent, CfgNode) or parts[-1] not in parent:
            close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ConfigError(f"{source}: unknown config key {key!r}{hint}")
        default = parent[parts[-1]]
        if isinstance(default, CfgNode):
            raise ConfigError(f"{source}: {key} is a section, give one of its keys instead")
        value = CfgNode._decode_cfg_value(raw)
        parent[parts[-1]] = _coerce(value, default, key, source)


def _check(condition: bool, key: str, message: str, source: str) -> None:
    if not condition:
        raise ConfigError(f"{source}: {key} {message}")


def validate_config(node: CfgNode, source: str = "config") -> None:
    """Check value ranges and cross-key constraints; raise :class:`ConfigError` naming the key."""
    _validate_dataset(node.DATASET, source)
    _validate_model(node.MODEL, source)
    _validate_training(node.TRAIN, node.DATASET.num_class, source)
    _validate_evaluation(node, source)
    _check(
        bool(_DEVICE_PATTERN.match(node.DEVICE)), "DEVICE",
        f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {node.DEVICE!r}", source,
    )
    _check(
        node.DIST.backend in _BACKEND_CHOICES, "DIST.backend",
        f"must be one of {_BACKEND_CHOICES}, got {node.DIST.backend!r}", source,
    )


def _validate_dataset(d: CfgNode, source: str) -> None:
    _check(d.num_class > 0, "DATASET.num_class", f"must be > 0, got {d.num_class}", source)
    sizes = d.imgSizes
    _check(
        len(sizes) > 0 and all(isinstance(s, int) and s > 0 for s in sizes),
        "DATASET.imgSizes", f"must be a non-empty tuple of positive ints, got {sizes!r}", source,
    )
    _check(d.imgMaxSize > 0, "DATASET.imgMaxSize", f"must be > 0, got {d.imgMaxSize}", source)
    _check(
        d.segm_downsampling_rate > 0, "DATASET.segm_downsampling_rate",
        f"must be > 0, got {d.segm_downsampling_rate}", source,
    )
    _check(
        d.padding_constant >= d.segm_downsampling_rate, "DATASET.padding_constant",
        f"({d.padding_constant}) must be >= DATASET.segm_downsampling_rate "
        f"({d.segm_downsampling_rate})", source,
    )
    _check(d.preflight in _PREFLIGHT_CHOICES, "DATASET.preflight",
           f"must be one of {_PREFLIGHT_CHOICES}, got {d.preflight!r}", source)
    _check(d.max_image_pixels > 0, "DATASET.max_image_pixels",
           f"must be > 0, got {d.max_image_pixels}", source)


def _validate_model(m: CfgNode, source: str) -> None:
    _check(m.backend in _MODEL_BACKEND_CHOICES, "MODEL.backend",
           f"must be one of {_MODEL_BACKEND_CHOICES}, got {m.backend!r}", source)
    _check(m.precision in _MODEL_PRECISION_CHOICES, "MODEL.precision",
           f"must be one of {_MODEL_PRECISION_CHOICES}, got {m.precision!r}", source)
    _check(m.calibration_images > 0, "MODEL.calibration_images",
           f"must be > 0, got {m.calibration_images}", source)
    both = [key for key in ("weights_encoder", "weights_decoder") if m[key]]
    _check(not (m.init_from and both), "MODEL.init_from",
           f"and MODEL.{' and MODEL.'.join(both)} are both set; MODEL.init_from starts the "
           "whole model from another one (for other classes), MODEL.weights_* load files that "
           "fit exactly: keep one", source)


def _validate_training(t: CfgNode, num_class: int, source: str) -> None:
    for key in ("batch_size_per_gpu", "num_epoch", "epoch_iters", "disp_iter"):
        _check(t[key] > 0, f"TRAIN.{key}", f"must be > 0, got {t[key]}", source)
    _check(
        0 <= t.start_epoch < t.num_epoch, "TRAIN.start_epoch",
        f"must be in [0, TRAIN.num_epoch={t.num_epoch}), got {t.start_epoch}", source,
    )
    _check(t.optim.upper() == "SGD", "TRAIN.optim", f"only 'SGD' is supported, got {t.optim!r}",
           source)
    for key in ("lr_encoder", "lr_decoder", "lr_pow", "weight_decay", "deep_sup_scale"):
        _check(t[key] >= 0, f"TRAIN.{key}", f"must be >= 0, got {t[key]}", source)
    _check(0 <= t.beta1 < 1, "TRAIN.beta1", f"must be in [0, 1), got {t.beta1}", source)
    _check(t.bn_momentum == -1 or 0 < t.bn_momentum <= 1, "TRAIN.bn_momentum",
           f"must be in (0, 1] or -1 (the original's values), got {t.bn_momentum}", source)
    for key in ("workers", "checkpoint_every", "checkpoint_minutes", "max_nonfinite_steps",
                "freeze_encoder_iters"):
        _check(t[key] >= 0, f"TRAIN.{key}", f"must be >= 0, got {t[key]}", source)
    weights = t.class_weights
    _check(not weights or (len(weights) == num_class
                           and all(isinstance(w, (int, float)) and not isinstance(w, bool)
                                   and 0 <= w < float("inf") for w in weights)
                           and sum(weights) > 0),
           "TRAIN.class_weights", f"must be () or {num_class} (DATASET.num_class) numbers "
           f">= 0, not all 0, got {weights!r}", source)


def _validate_evaluation(node: CfgNode, source: str) -> None:
    for section in ("TRAIN", "VAL", "TEST"):
        amp = node[section].amp
        _check(amp in _AMP_CHOICES, f"{section}.amp",
               f"must be one of {_AMP_CHOICES}, got {amp!r}", source)
    for section in ("VAL", "TEST"):
        n = node[section]
        # read by nothing: kept so that config.yaml files dumped by the original load, which
        # evaluated one image per forward pass (images differ in size) and set it to 1
        _check(n.batch_size == 1, f"{section}.batch_size",
               f"must be 1 (images are evaluated one at a time), got {n.batch_size}", source)
        _check(n.workers >= 0, f"{section}.workers", f"must be >= 0, got {n.workers}", source)
    for key in ("window_size", "window_stride"):
        value = node.TEST[key]
        _check(value >= 0, f"TEST.{key}", f"must be >= 0 (0 = off/auto), got {value}", source)


def load_config(cfg_file: str | os.PathLike | None = None, opts: Sequence[str] = ()) -> CfgNode:
    """Build the configuration of a run: defaults <- YAML file <- ``KEY VALUE`` overrides.

    Args:
        cfg_file: YAML file overriding some defaults, or the name of a packaged config (see
            :func:`resolve_config_file`); ``None``: defaults only.
        opts: flat list of command-line overrides, e.g. ``["TRAIN.num_epoch", "5"]``; values
            are parsed as Python literals (``"(300,)"`` becomes a tuple).

    Returns:
        A validated, frozen :class:`CfgNode`.

    Raises:
        FileNotFoundError: ``cfg_file`` is neither a file nor a packaged config's name.
        ConfigError: unknown key, wrong type or invalid value; the message names the file or
            the command line and the key.
    """
    node = get_cfg_defaults()
    source = "defaults"
    if cfg_file is not None:
        source = os.fspath(resolve_config_file(cfg_file))
        with open(source, encoding="utf-8") as f:
            try:
                tree = yaml.safe_load(f) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
        if not isinstance(tree, dict):
            raise ConfigError(f"{source}: expected a mapping of config keys at the top level")
        _merge_pairs(node, _flatten(tree), source)
    opts = list(opts)
    if opts:
        if len(opts) % 2:
            raise ConfigError(
                f"command-line overrides must be KEY VALUE pairs, got an odd number: {opts}"
            )
        _merge_pairs(node, zip(opts[0::2], opts[1::2]), "command line")
        source = f"{source} + command line"
    validate_config(node, source)
    node.freeze()
    return node


# Keys (or whole sections) that may differ between a run and its resumption: where the files
# are (the data may move; its content must not change), how often to log and save, how many
# loader processes, what only matters when a run starts (initial weights, the original's
# start_epoch: the resumed state replaces them), the collective backend, and evaluation and
# inference settings. Every other key changes what is trained.
RESUME_MAY_CHANGE = (
    "DIR", "DEVICE", "DATASET.root_dataset", "DATASET.list_train", "DATASET.list_val",
    "MODEL.weights_encoder", "MODEL.weights_decoder", "MODEL.init_from", "MODEL.fast_inference",
    "MODEL.backend",
    "TRAIN.start_epoch", "TRAIN.workers", "TRAIN.disp_iter", "TRAIN.pretrained", "TRAIN.resume",
    "TRAIN.checkpoint_every", "TRAIN.checkpoint_minutes", "DIST.backend", "VAL", "TEST",
    # how the run copes with faults, not what it trains: a run that stopped on a bad sample or
    # a string of fp16 overflows may be continued with these changed
    "DATASET.preflight", "DATASET.max_image_pixels", "TRAIN.skip_bad_samples",
    "TRAIN.max_nonfinite_steps", "TRAIN.deterministic",
    # the same function of the same weights, computed in another order (float rounding only)
    "TRAIN.factored_heads",
)


def _leaf_values(node: CfgNode) -> dict[str, Any]:
    """``{"TRAIN.lr_encoder": 0.02, ...}``; sequences as tuples (YAML gives lists)."""
    values = {}
    for key in _all_keys(node):
        value = node
        for part in key.split("."):
            value = value[part]
        values[key] = tuple(value) if isinstance(value, list) else value
    return values


def resume_changes(saved_yaml: str, current: CfgNode) -> list[tuple[str, Any, Any]]:
    """Keys that change the run's meaning and differ from the config a checkpoint was trained
    with, as ``(key, saved value, current value)`` in key order.

    Keys under :data:`RESUME_MAY_CHANGE` are not compared, nor keys that one of the two configs
    does not have (a checkpoint written before the key existed).

    Raises:
        ConfigError: ``saved_yaml`` is not a config.
    """
    try:
        saved = CfgNode.load_cfg(saved_yaml)
    except Exception as exc:  # yacs raises assorted types for text that is not a config
        raise ConfigError(f"the config stored in the checkpoint cannot be read: {exc}") from exc
    old, new = _leaf_values(saved), _leaf_values(current)

    def compared(key: str) -> bool:
        return not any(key == k or key.startswith(k + ".") for k in RESUME_MAY_CHANGE)

    return [(key, old[key], new[key]) for key in sorted(old.keys() & new.keys())
            if compared(key) and old[key] != new[key]]
