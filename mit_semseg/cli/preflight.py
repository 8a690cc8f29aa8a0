"""Start-up checks: what the scripts verify before any slow work.

A run that would fail later (hours into training, after downloading ImageNet weights, after
building a large model, inside a worker process) fails here instead, with one message naming
the file or config key and the fix. Each script runs, in this order, the checks that apply:

1. the architecture names (``MODEL.arch_encoder`` / ``MODEL.arch_decoder``) and the model's
   shape (``MODEL.fc_dim``), on a skeleton built on the ``meta`` device (no memory, no
   weights, milliseconds);
2. a training set-up that cannot train (BatchNorm on one pooled value per channel);
3. the sample list (``DATASET.list_train`` or ``DATASET.list_val``), as deep as
   ``DATASET.preflight`` says (see :mod:`mit_semseg.data.check`);
4. every checkpoint file the run loads: readable, a state dict, and fitting the configured
   model key for key and shape (a different class count names ``DATASET.num_class`` and
   ``MODEL.init_from``); the encoder of the model ``MODEL.init_from`` names, and its
   architecture;
5. the output folder: creatable, writable, with room for what the run writes. Last, so that a
   run refused for any other reason leaves no new folder behind.

Every failure raises :class:`SetupError` (a ``ValueError``), which the scripts report as
``script.py: error: ...`` with exit status 2.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mit_semseg.data.check import check_dataset
from mit_semseg.data.image_io import MAX_IMAGE_PIXELS
from mit_semseg.engine.checkpoint import (
    LAST_CHECKPOINT,
    TRAINING_STATE_FORMAT,
    epoch_checkpoint_paths,
    is_own_last_checkpoint,
    resolve_resume_path,
)
from mit_semseg.models import build_segmentation_model
from mit_semseg.models.checkpoint_format import (
    read_state_dict,
    state_dict_mismatch,
    strip_module_prefix,
)
from mit_semseg.models.init_from import InitSource
from mit_semseg.models.registry import DECODERS, ENCODERS

__all__ = [
    "SetupError",
    "check_architectures",
    "check_init_source",
    "check_output_dir",
    "check_sample_list",
    "check_state_dict",
    "check_trainable_batch_norm",
    "check_weight_file",
    "checkpoint_bytes",
    "model_skeleton",
]

logger = logging.getLogger(__name__)

# what an evaluation or inference run needs at least: metrics, confusion matrix, a few pictures
MIN_FREE_BYTES = 16 * 2**20
# a probe write of this size fails at once on a full disk (an empty file may still be created)
_PROBE_BYTES = 64 * 2**10


class SetupError(ValueError):
    """Nothing ran: the config, the data or a file is not usable (the message says how)."""


def check_architectures(cfg: Any) -> None:
    """``MODEL.arch_encoder`` and ``MODEL.arch_decoder`` name registered modules."""
    for registry, key in ((ENCODERS, "arch_encoder"), (DECODERS, "arch_decoder")):
        name = cfg.MODEL[key]
        if name not in registry:
            raise SetupError(f"MODEL.{key} {name!r} is not a known {registry.kind}; use one "
                             f"of: {', '.join(registry.names())}")


def model_skeleton(cfg: Any) -> nn.Module:
    """The configured model on the ``meta`` device: shapes and keys, no data, no weights.

    Raises:
        SetupError: an unknown architecture, or ``MODEL.fc_dim`` not matching the encoder.
    """
    check_architectures(cfg)
    # the builder logs how it initialises the weights, which a skeleton does not have
    builder_log = logging.getLogger("mit_semseg.models.builder")
    level = builder_log.level
    builder_log.setLevel(logging.WARNING)
    try:
        with torch.device("meta"):
            return build_segmentation_model(
                cfg.MODEL.arch_encoder, cfg.MODEL.arch_decoder, cfg.DATASET.num_class,
                fc_dim=cfg.MODEL.fc_dim, pretrained=False)
    except ValueError as exc:  # the fc_dim check, which names MODEL.fc_dim and its value
        raise SetupError(str(exc)) from None
    finally:
        builder_log.setLevel(level)


def _pooled_to_one_value(module: nn.Module) -> bool:
    """A block that pools its input to 1x1 and then normalises it with BatchNorm (PSPNet's
    first pyramid level)."""
    if not isinstance(module, nn.Sequential) or not len(module) or not isinstance(
            module[0], nn.AdaptiveAvgPool2d):
        return False
    size = module[0].output_size
    return size in (1, (1, 1)) and any(isinstance(m, _BatchNorm) for m in module)


def check_trainable_batch_norm(cfg: Any, skeleton: nn.Module, num_devices: int,
                               world_size: int) -> None:
    """Training batch statistics over a 1x1 pooled map need two or more images.

    BatchNorm in training mode cannot normalise a single value per channel, so a decoder that
    pools to 1x1 before a BatchNorm (``ppm``, ``ppm_deepsup``) fails on its first step when
    the statistics cover one image: one image per device, and each device on its own.
    """
    t = cfg.TRAIN
    shared_by = num_devices * world_size if cfg.DIST.sync_bn else 1
    if t.fix_bn or t.batch_size_per_gpu * shared_by > 1:
        return
    if any(_pooled_to_one_value(m) for m in skeleton.decoder.modules()):
        raise SetupError(
            f"TRAIN.batch_size_per_gpu 1 cannot train MODEL.arch_decoder "
            f"{cfg.MODEL.arch_decoder!r}: its pyramid pooling normalises a 1x1 map, and "
            "BatchNorm cannot train on one value per channel; use TRAIN.batch_size_per_gpu 2 "
            "or more, several devices with DIST.sync_bn True, TRAIN.fix_bn True (frozen "
            "BatchNorm), or a decoder without pyramid pooling (c1, c1_deepsup, upernet)")


def checkpoint_bytes(skeleton: nn.Module) -> int:
    """Size of one ``encoder_*`` + ``decoder_*`` pair of the model, in bytes (float32)."""
    tensors = [*skeleton.parameters(), *skeleton.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


def check_output_dir(path: str | os.PathLike, key: str, needed_bytes: int = MIN_FREE_BYTES,
                     wanted_bytes: int = 0, freed_bytes: int = 0) -> None:
    """``path`` can be created and written, and has ``needed_bytes`` free.

    Args:
        path: the output folder (created if missing).
        key: the config key it comes from, for the message.
        needed_bytes: below this much free space the run cannot write its outputs: an error.
        wanted_bytes: below this much the run will fill the disk before it ends: a warning.
        freed_bytes: the size of the files the run replaces (they count as free space).

    Raises:
        SetupError: naming ``key``, the folder, the reason and the fix.
    """
    fix = f"make it writable or set {key} to another folder"
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".write-test-") as probe:
            probe.write(b"\0" * _PROBE_BYTES)
            probe.flush()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SetupError(f"{key} {path}: cannot write there ({reason}); {fix}") from None
    free = shutil.disk_usage(path).free + freed_bytes
    if free < needed_bytes:
        counted = f" (with {_mib(freed_bytes)} of files it replaces)" if freed_bytes else ""
        raise SetupError(f"{key} {path}: {_mib(free)} free{counted}, this run needs at least "
                         f"{_mib(needed_bytes)}; free some space or set {key} to another "
                         "folder")
    if free < wanted_bytes:
        logger.warning("%s %s: %s free, the whole run writes about %s; it may stop when the "
                       "disk is full", key, path, _mib(free), _mib(wanted_bytes))


def check_sample_list(cfg: Any, key: str) -> None:
    """The ``DATASET.<key>`` list and its files, to the depth ``DATASET.preflight`` says.

    Raises:
        SetupError: the list is missing or some of its lines are bad; one line naming the
            first bad lines, their count and the command that lists them all.
    """
    d = cfg.DATASET
    mode, odgt, root = d.preflight, d[key], d.root_dataset
    if mode == "off":
        return
    if not os.path.isfile(odgt):
        raise SetupError(f"DATASET.{key} {odgt}: no such file; point DATASET.{key} and "
                         "DATASET.root_dataset at your data, or build a list with "
                         "python -m mit_semseg.data.odgt")
    start = time.perf_counter()
    report = check_dataset(odgt, d.num_class, root, full=mode == "full",
                           max_pixels=d.max_image_pixels)
    if not report.ok:
        command = f"python -m mit_semseg.data.check {odgt} --num-class {d.num_class} " \
                  f"--root {root}" + (" --headers-only" if mode != "full" else "") + \
                  (f" --max-image-pixels {d.max_image_pixels}"
                   if d.max_image_pixels != MAX_IMAGE_PIXELS else "")
        raise SetupError(f"DATASET.{key} {odgt}: {report.summary()}; fix or remove these "
                         f"lines (list them all with: {command})")
    logger.info("checked %d samples of %s (%s) in %.1f s", report.num_records, odgt, mode,
                time.perf_counter() - start)


def _first(keys: list[str], count: int = 3) -> str:
    return ", ".join(keys[:count]) + (", ..." if len(keys) > count else "")


def check_state_dict(part: nn.Module, state: Any, what: str, arch: tuple[str, str],
                     num_class: int) -> None:
    """``state`` loads into ``part`` (a skeleton's encoder or decoder) with ``strict=True``.

    Args:
        part: the module the weights are for (on any device; only keys and shapes are read).
        state: the loaded file content.
        what: the file, as the message names it (e.g. ``"decoder weights ckpt/decoder_x.pth"``).
        arch: the config key and name of ``part``'s architecture, e.g.
            ``("MODEL.arch_decoder", "ppm_deepsup")``.
        num_class: ``DATASET.num_class``, named when only the class count differs.

    Raises:
        SetupError: not a state dict, other keys, or other shapes.
    """
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise SetupError(f"{what} holds a {type(state).__name__}, not a state dict of weights")
    if state.get("format") == TRAINING_STATE_FORMAT:
        raise SetupError(f"{what} is a resumable training state, not weights; continue the "
                         "run with --resume PATH instead")
    arch_key, arch_name = arch
    mismatch = state_dict_mismatch(part, strip_module_prefix(state))
    if not mismatch:
        return
    if mismatch.missing or mismatch.unexpected:
        counts = [f"{len(keys)} {kind} key(s) ({_first(keys)})" for kind, keys in
                  (("missing", mismatch.missing), ("unexpected", mismatch.unexpected)) if keys]
        raise SetupError(f"{what} does not fit {arch_key} {arch_name!r}: {', '.join(counts)}; "
                         f"set {arch_key} to the architecture it was trained with")
    classes = mismatch.other_class_count(num_class)
    if classes is not None:
        raise SetupError(f"{what} was trained for {classes} classes but DATASET.num_class is "
                         f"{num_class}; set DATASET.num_class {classes}, use weights "
                         f"trained for {num_class} classes, or fine-tune these for your "
                         "classes with MODEL.init_from (a run folder or a released model's "
                         "name) instead of MODEL.weights_*")
    key, (saved, model) = next(iter(mismatch.shapes.items()))
    raise SetupError(f"{what} does not fit {arch_key} {arch_name!r}: {key} has shape "
                     f"{list(saved)} in the file but {list(model)} in the model "
                     f"({len(mismatch.shapes)} such key(s)); set {arch_key} and MODEL.fc_dim to "
                     "what it was trained with")


def check_weight_file(path: str | os.PathLike, part: nn.Module, what: str,
                      arch: tuple[str, str], num_class: int, fix: str) -> None:
    """The file exists, is a readable checkpoint and fits ``part`` (see
    :func:`check_state_dict`); ``fix`` ends the message when the file is missing."""
    try:
        state = read_state_dict(path, what)
    except FileNotFoundError:
        raise SetupError(f"{what} {path}: no such file; {fix}") from None
    except RuntimeError as exc:
        if exc.__cause__ is None:  # read, but it holds something else than a state dict
            raise SetupError(str(exc)) from None
        lines = str(exc.__cause__).strip().splitlines()
        reason = lines[0] if lines else type(exc.__cause__).__name__
        raise SetupError(f"{what} {path} is not a readable PyTorch weights file ({reason}); "
                         "if it is truncated or corrupt, copy or download it again") from None
    check_state_dict(part, state, f"{what} {path}", arch, num_class)


# ----------------------------------------------------------------------------- per script
def _parts(skeleton: nn.Module, cfg: Any) -> dict[str, tuple[nn.Module, tuple[str, str]]]:
    m = cfg.MODEL
    return {"encoder": (skeleton.encoder, ("MODEL.arch_encoder", m.arch_encoder)),
            "decoder": (skeleton.decoder, ("MODEL.arch_decoder", m.arch_decoder))}


def check_training(cfg: Any, num_devices: int, world_size: int) -> None:
    """Everything ``train.py`` can check before building the model (module docstring) but
    the resumable state, which :func:`check_resume_state` checks once it is loaded.

    Args:
        cfg: the run's config.
        num_devices: devices driven by this process.
        world_size: processes of the run (torchrun), 1 otherwise.
    """
    skeleton = model_skeleton(cfg)
    check_trainable_batch_norm(cfg, skeleton, num_devices, world_size)
    check_sample_list(cfg, "list_train")
    resume = resolve_resume_path(cfg.TRAIN.resume, cfg.DIR)
    resuming = resume is not None
    start = cfg.TRAIN.start_epoch
    if start > 0 and not resuming:  # the original's way to resume: the epoch's weights in DIR
        paths = epoch_checkpoint_paths(cfg.DIR, start)
        files = {part: (paths[part], f"TRAIN.start_epoch {start}: checkpoint",
                        f"set TRAIN.start_epoch to an epoch whose {part}_epoch_N.pth is in DIR, "
                        "or continue with --resume auto") for part in ("encoder", "decoder")}
    else:
        files = {part: (cfg.MODEL[f"weights_{part}"], f"MODEL.weights_{part}",
                        f"set MODEL.weights_{part} to an existing file ('' for none)")
                 for part in ("encoder", "decoder")}
    for part, (module, arch) in _parts(skeleton, cfg).items():
        path, what, fix = files[part]
        if path:
            check_weight_file(path, module, what, arch, cfg.DATASET.num_class, fix)
    # the resumable state holds the weights and the momentum; it is written next to the old
    # one before replacing it, and every epoch adds a set of weights. A run that continues
    # DIR's own checkpoint replaces it: that file's space is already taken.
    weights = checkpoint_bytes(skeleton)
    replaced = (os.path.getsize(os.path.join(cfg.DIR, LAST_CHECKPOINT))
                if is_own_last_checkpoint(resume, cfg.DIR) else 0)
    check_output_dir(cfg.DIR, "DIR", needed_bytes=MIN_FREE_BYTES + 5 * weights,
                     wanted_bytes=MIN_FREE_BYTES + (4 + cfg.TRAIN.num_epoch) * weights,
                     freed_bytes=replaced)


def check_init_source(cfg: Any, source: InitSource) -> None:
    """The model to fine-tune from (``MODEL.init_from``) has the configured encoder, and its
    weight files are readable; a different decoder is allowed (what fits is loaded) and
    logged.

    Raises:
        SetupError: naming ``MODEL.init_from``, the source's architecture and the fix.
    """
    m = cfg.MODEL
    what = f"MODEL.init_from {m.init_from} ({source.name})"
    if source.arch is not None:
        encoder, decoder = source.arch
        if encoder.lower() != m.arch_encoder.lower():
            raise SetupError(f"{what} is a {encoder} + {decoder} model but MODEL.arch_encoder is "
                             f"{m.arch_encoder!r}; set MODEL.arch_encoder {encoder} (and "
                             "MODEL.fc_dim to its width), or start from another model")
        if decoder.lower().removesuffix("_deepsup") != m.arch_decoder.lower().removesuffix(
                "_deepsup"):
            logger.warning("%s has a %s decoder, MODEL.arch_decoder is %s: only the decoder "
                           "layers of the same shape are loaded", what, decoder, m.arch_decoder)
    skeleton = model_skeleton(cfg)
    fix = "give a run folder that holds both files, or a released model's name"
    check_weight_file(source.encoder_file, skeleton.encoder, f"{what} encoder weights",
                      ("MODEL.arch_encoder", m.arch_encoder), cfg.DATASET.num_class, fix)
    try:
        read_state_dict(source.decoder_file, f"{what} decoder weights")
    except (FileNotFoundError, RuntimeError) as error:
        raise SetupError(f"{error}; {fix}") from None


def check_resume_state(cfg: Any, saved: Mapping[str, Any], path: str) -> None:
    """The weights of a resumable state (``--resume``) fit the configured model."""
    skeleton = model_skeleton(cfg)
    for part, (module, arch) in _parts(skeleton, cfg).items():
        check_state_dict(module, saved[part], f"resume checkpoint {path} ({part})", arch,
                         cfg.DATASET.num_class)


def check_evaluation(cfg: Any, weight_files: Mapping[str, Path], checkpoint_key: str,
                     output_key: str, list_key: str | None) -> None:
    """Everything ``eval.py``, ``eval_multipro.py`` and ``test.py`` can check before building
    the model: the model's shape, the output folder, the sample list (``list_key``; None for
    ``test.py``, whose inputs are checked one by one) and the two weight files."""
    skeleton = model_skeleton(cfg)
    if list_key is not None:
        check_sample_list(cfg, list_key)
    fix = (f"set DIR to the folder that holds the encoder_/decoder_ files and "
           f"{checkpoint_key} to their common suffix (e.g. epoch_20.pth), or run a released "
           "model with --model NAME (see --help)")
    missing = [str(path) for path in weight_files.values() if not Path(path).is_file()]
    if missing:
        raise SetupError(f"checkpoint file(s) not found: {', '.join(missing)}; {fix}")
    for part, (module, arch) in _parts(skeleton, cfg).items():
        check_weight_file(weight_files[part], module, f"{part} weights", arch,
                          cfg.DATASET.num_class, fix)
    check_output_dir(cfg.DIR if output_key == "DIR" else cfg.TEST.result, output_key)
