"""Which model ``eval.py``, ``eval_multipro.py`` and ``test.py`` run, and what runs it.

The weights are those of a training run, ``DIR/{encoder,decoder}_<checkpoint>``, or those of
a model released with the original (:mod:`mit_semseg.models.zoo`), downloaded into the cache
(``$MIT_SEMSEG_HOME/models/<NAME>/``, see :mod:`mit_semseg.download`) on first use:

* ``--model NAME`` picks a released model. Without ``--cfg`` its packaged config is the base;
  the model's ``MODEL.*`` keys and ``DATASET.num_class`` are set on top, then the command
  line's ``KEY VALUE`` pairs. ``DIR``, where ``eval.py`` writes its results, becomes
  ``ckpt/<NAME>`` unless the command line sets it: results never go into the cache, and never
  into the folder of a training run that a ``--cfg`` file names.
* ``test.py`` without ``--model`` falls back to the released model of the config's
  architecture when the config is a packaged recipe, ``DIR`` holds no weights at all (no
  ``encoder_*``/``decoder_*`` file) and neither ``DIR`` nor ``TEST.checkpoint`` is on the
  command line, so ``python test.py --imgs
  photo.jpg`` works on a fresh machine as the original's demo did; a warning names the model.
  Evaluation never falls back: its numbers must belong to the weights the user meant.

The start-up checks (:func:`mit_semseg.cli.preflight.check_evaluation`) run on the fetched
files; the sample list is checked before a download, so a bad list costs no download.

``MODEL.backend onnxruntime`` (CPU only, ``pip install 'mit_semseg[onnx]'``) runs the
weights through onnxruntime, from an ONNX export made on first use and cached by the hash of
the weights (:func:`mit_semseg.deploy.onnxruntime.cached_onnx_export`). ``MODEL.precision
int8`` (CPU with int8 units, ``pip install 'mit_semseg[int8]'``) runs them in int8, calibrated
on first use on ``MODEL.calibration_images`` images of ``MODEL.calibration_list`` and cached the
same way (:func:`mit_semseg.deploy.int8.int8_model`).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mit_semseg.cli import common, preflight
from mit_semseg.config import load_config
from mit_semseg.config.packaged import PACKAGED_DIR, resolve_config_file
from mit_semseg.deploy.int8 import CalibrationSet, int8_model, int8_unavailable
from mit_semseg.deploy.onnxruntime import OnnxRuntimeModel, cached_onnx_export
from mit_semseg.inference.trained_model import TrainedModel
from mit_semseg.models import zoo

__all__ = [
    "ONNX_MODULES",
    "calibration_set",
    "check_backend",
    "fallback_release",
    "holds_weights",
    "inference_model",
    "load_script_config",
]

logger = logging.getLogger(__name__)

# what MODEL.backend onnxruntime imports: onnxruntime runs the model, onnx and onnxscript export it
ONNX_MODULES = ("onnxruntime", "onnx", "onnxscript")


def load_script_config(args: argparse.Namespace) -> tuple[Any, zoo.PretrainedModel | None]:
    """The run's config and the released model ``--model`` names (None without it).

    Raises:
        UsageError: ``--model`` names no released model (the message lists them), or the
            command line also picks a checkpoint (the released model has its own).
        ConfigError, FileNotFoundError: as :func:`mit_semseg.config.load_config`.
    """
    if args.model is None:
        return load_config(args.cfg or common.DEFAULT_CFG, args.opts), None
    try:
        release = zoo.get_model(args.model)
    except KeyError as error:
        raise common.UsageError(f"--model: {error.args[0]}") from None
    chosen = sorted({"VAL.checkpoint", "TEST.checkpoint"} & set(args.opts[0::2]))
    if chosen:
        raise common.UsageError(
            f"--model {release.name} runs its released epoch {release.epoch}; drop "
            f"{' and '.join(chosen)}, or run your own weights with DIR and --cfg instead")
    overrides = [*release.config_opts(), "DIR", f"ckpt/{release.name}", *args.opts]
    return load_config(args.cfg or release.config, overrides), release


def holds_weights(folder: str | Path) -> bool:
    """``folder`` holds at least one ``encoder_*`` or ``decoder_*`` file."""
    folder = Path(folder)
    return folder.is_dir() and any(
        p.name.startswith(("encoder_", "decoder_")) for p in folder.iterdir())


def fallback_release(cfg: Any, args: argparse.Namespace) -> zoo.PretrainedModel | None:
    """The released model ``test.py`` runs in place of the config's weights, or None.

    That is the released model of the config's architecture (same ``MODEL.fc_dim`` and
    ``DATASET.num_class``) when the config is a packaged recipe (``--cfg`` absent or naming
    one), ``DIR`` holds no weights and the command line sets neither ``DIR`` nor
    ``TEST.checkpoint``: the user asked for a recipe, not for weights. A user's own config
    file always means the user's own weights.
    """
    if args.model is not None or {"DIR", "TEST.checkpoint"} & set(args.opts[0::2]):
        return None
    recipe = resolve_config_file(args.cfg or common.DEFAULT_CFG).resolve()
    if recipe.parent != PACKAGED_DIR or holds_weights(cfg.DIR):
        return None
    release = zoo.find_model(cfg.MODEL.arch_encoder, cfg.MODEL.arch_decoder)
    if release is None or (release.fc_dim, release.num_class) != (cfg.MODEL.fc_dim,
                                                                   cfg.DATASET.num_class):
        return None
    logger.warning("DIR %s holds no weights: running the released model %s (the config's "
                   "architecture, downloaded into the cache on first use); set DIR to your "
                   "own run, or choose a model with --model NAME", cfg.DIR, release.name)
    return release


def check_backend(cfg: Any, devices: Sequence[torch.device], amp_key: str) -> None:
    """``MODEL.backend`` and ``MODEL.precision`` can run here: onnxruntime needs its packages,
    the CPU and fp32; int8 needs torchao, a CPU with int8 units, the PyTorch fast path and no
    autocast.

    Raises:
        SetupError: naming ``MODEL.backend`` or ``MODEL.precision`` and the fix.
    """
    if cfg.MODEL.precision == "int8":
        _check_int8(cfg, devices, amp_key)
    if cfg.MODEL.backend != "onnxruntime":
        return
    missing = [name for name in ONNX_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise preflight.SetupError(f"MODEL.backend onnxruntime needs {', '.join(missing)}: "
                                   "pip install 'mit_semseg[onnx]' (or use MODEL.backend torch)")
    gpus = sorted({str(d) for d in devices if d.type != "cpu"})
    if gpus:
        raise preflight.SetupError(f"MODEL.backend onnxruntime runs on the CPU, not on "
                                   f"{', '.join(gpus)}: add --gpus cpu (or use MODEL.backend "
                                   "torch)")
    section, key = amp_key.split(".")
    if cfg[section][key]:
        raise preflight.SetupError(f"{amp_key} {cfg[section][key]} applies to MODEL.backend "
                                   f"torch only; set {amp_key} '' with onnxruntime")


def _check_int8(cfg: Any, devices: Sequence[torch.device], amp_key: str) -> None:
    if cfg.MODEL.backend != "torch":
        raise preflight.SetupError(f"MODEL.precision int8 runs with MODEL.backend torch, not "
                                   f"{cfg.MODEL.backend}; set MODEL.backend torch or "
                                   "MODEL.precision fp32")
    if not cfg.MODEL.fast_inference:
        raise preflight.SetupError("MODEL.fast_inference False asks for the original's fp32 "
                                   "arithmetic, which MODEL.precision int8 is not; set one of "
                                   "them back")
    section, key = amp_key.split(".")
    if cfg[section][key]:
        raise preflight.SetupError(f"{amp_key} {cfg[section][key]} cannot be combined with "
                                   f"MODEL.precision int8; set {amp_key} ''")
    for device in sorted(set(devices), key=str):
        reason = int8_unavailable(device)
        if reason:
            raise preflight.SetupError(f"MODEL.precision int8: {reason} (or use "
                                       "MODEL.precision fp32)")


def calibration_set(cfg: Any) -> CalibrationSet:
    """The int8 calibration images the config asks for (``MODEL.calibration_list`` and
    ``MODEL.calibration_images``, at the ``DATASET`` scales).

    Raises:
        SetupError: the list is missing or unusable (naming ``MODEL.calibration_list``).
    """
    d = cfg.DATASET
    calibration = CalibrationSet(
        list_file=cfg.MODEL.calibration_list or d.list_train, root_dataset=d.root_dataset,
        images=cfg.MODEL.calibration_images, scales=tuple(d.imgSizes), max_size=d.imgMaxSize,
        padding_constant=d.padding_constant)
    try:
        calibration.image_paths()
    except (OSError, ValueError) as error:
        source = ("MODEL.calibration_list" if cfg.MODEL.calibration_list
                  else "MODEL.calibration_list '' (= DATASET.list_train)")
        raise preflight.SetupError(f"{source}: {error}; point MODEL.calibration_list at a "
                                   "list of images like those you will segment") from None
    return calibration


def inference_model(cfg: Any, release: zoo.PretrainedModel | None, checkpoint_key: str,
                    output_key: str, list_key: str | None, progress: bool = True
                    ) -> TrainedModel:
    """The model a script runs, with its files fetched, checked and ready for the backend.

    Args:
        cfg: the run's config.
        release: the released model to run, or None for ``DIR``'s weights.
        checkpoint_key: ``VAL.checkpoint`` or ``TEST.checkpoint``.
        output_key: ``DIR`` or ``TEST.result``, the folder the script writes to.
        list_key: ``list_val`` for the evaluation scripts, None for ``test.py``.
        progress: show download and int8 calibration progress bars.

    Raises:
        mit_semseg.download.DownloadError: offline or a bad mirror; one line naming the URLs
            and the folder to put the files in (its ``summary``: the file names and the
            folder).
        SetupError: see :func:`mit_semseg.cli.preflight.check_evaluation`, and a failed ONNX
            export check and an unusable int8 calibration list.
    """
    section = checkpoint_key.split(".")[0]
    model = common.trained_model(cfg, cfg[section].checkpoint)
    # checked before any download, like the sample list
    calibration = calibration_set(cfg) if cfg.MODEL.precision == "int8" else None
    if release is not None:
        if list_key is not None:  # cheap, and it decides whether the download is of any use
            preflight.check_sample_list(cfg, list_key)
            list_key = None
        encoder, _ = zoo.fetch(release.name, progress=progress)
        model = dataclasses.replace(model, weights_dir=encoder.parent,
                                    checkpoint=release.checkpoint)
        logger.info("released model %s: %s", release.name, encoder.parent)
    preflight.check_evaluation(cfg, model.weight_files(), checkpoint_key, output_key, list_key)
    if cfg.MODEL.backend == "onnxruntime":
        model = OnnxRuntimeModel(**dataclasses.asdict(model), onnx_file=cached_onnx_export(model))
    if calibration is not None:
        model = int8_model(model, calibration, progress=progress)
    return model
