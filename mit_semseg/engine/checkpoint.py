"""Checkpoint files: the original's per-epoch weights plus a resumable training state.

Files in the output folder ``DIR`` (``N`` is the 1-based epoch):

* ``encoder_epoch_N.pth`` / ``decoder_epoch_N.pth``: plain ``state_dict`` of each net, CPU
  tensors, no ``module.`` prefix, the same keys as the original package (loadable by it).
* ``history_epoch_N.pth``: ``{'train': {'epoch': [...], 'loss': [...], 'acc': [...], ...}}``,
  the original's format with extra lists (iteration, learning rates).
* ``checkpoint_last.pth``: everything needed to continue a killed run exactly: both nets, both
  optimizers, the AMP gradient scaler, the number of finished iterations, the history and the
  random-number-generator states of every process.

Every file is written atomically, so a run killed while saving leaves the previous version.
"""

from __future__ import annotations

import glob
import io
import logging
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from mit_semseg.files import TEMP_SUFFIX, atomic_write_bytes

__all__ = [
    "LAST_CHECKPOINT",
    "TRAINING_STATE_FORMAT",
    "atomic_save",
    "capture_rng_state",
    "epoch_checkpoint_paths",
    "is_own_last_checkpoint",
    "load_training_state",
    "process_rng_state",
    "remove_stale_temp_files",
    "resolve_resume_path",
    "restore_rng_state",
    "save_epoch_checkpoint",
    "RunStamp",
    "save_training_state",
    "state_dict_cpu",
    "unwrap_model",
]

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "checkpoint_last.pth"
TRAINING_STATE_FORMAT = "mit_semseg.training_state.v1"
_REQUIRED = ("format", "epoch", "iteration", "encoder", "decoder", "optimizers", "rng", "history")


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` that never leaves a half-written ``path``."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getbuffer())


def unwrap_model(module: nn.Module) -> nn.Module:
    """The network inside DataParallel / DistributedDataParallel wrappers (nested too)."""
    while isinstance(getattr(module, "module", None), nn.Module) and (
        isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel))
        or type(module).__name__.endswith("DataParallel")  # our own dict-scattering wrappers
    ):
        module = module.module
    return module


def state_dict_cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict`` of the unwrapped module with tensors copied to the CPU."""
    return {k: v.detach().cpu() for k, v in unwrap_model(module).state_dict().items()}


def epoch_checkpoint_paths(out_dir: str, epoch: int) -> dict[str, str]:
    """Paths of the three per-epoch files (``encoder``, ``decoder``, ``history``)."""
    return {
        name: os.path.join(out_dir, f"{name}_epoch_{epoch}.pth")
        for name in ("encoder", "decoder", "history")
    }


def save_epoch_checkpoint(out_dir: str, epoch: int, encoder: nn.Module, decoder: nn.Module,
                          history: Mapping[str, Any]) -> dict[str, str]:
    """Write ``{encoder,decoder,history}_epoch_<epoch>.pth`` (original names and format)."""
    paths = epoch_checkpoint_paths(out_dir, epoch)
    atomic_save(dict(history), paths["history"])
    atomic_save(state_dict_cpu(encoder), paths["encoder"])
    atomic_save(state_dict_cpu(decoder), paths["decoder"])
    logger.info("Saved %s", ", ".join(os.path.basename(p) for p in paths.values()))
    return paths


def capture_rng_state(cuda_devices: Sequence[torch.device] = ()) -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's CPU generator, and of the CUDA generators of
    ``cuda_devices`` (the GPUs this process trains on, in local order; others are not read)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        # lists, not an ndarray, so that the file loads with torch.load(weights_only=True)
        "numpy": (kind, keys.tolist(), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": [torch.cuda.get_rng_state(d) for d in cuda_devices],
    }


def restore_rng_state(state: Mapping[str, Any],
                      cuda_devices: Sequence[torch.device] = ()) -> None:
    """Inverse of :func:`capture_rng_state`.

    Saved CUDA state ``i`` goes to ``cuda_devices[i]``. When the counts differ (a run resumed
    on fewer or more GPUs than it was saved from), the extra saved states are ignored and a
    GPU without one keeps its current (freshly seeded) generator; a warning says so.
    """
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    saved_cuda = list(state.get("cuda") or [])
    if len(saved_cuda) != len(cuda_devices):
        logger.warning(
            "the checkpoint holds %d CUDA generator state(s) for %d GPU(s) of this process: "
            "%s", len(saved_cuda), len(cuda_devices),
            "the extra states are ignored" if len(saved_cuda) > len(cuda_devices)
            else "the other GPUs keep fresh seeds, so their dropout masks differ from the "
            "saved run's")
    for device, cuda_state in zip(cuda_devices, saved_cuda):
        torch.cuda.set_rng_state(cuda_state, device)


def process_rng_state(saved: Sequence[Mapping[str, Any]], rank: int, first_gpu: int,
                      num_gpus: int) -> dict[str, Any]:
    """What process ``rank`` restores from a checkpoint's ``rng`` list (one entry per saving
    process): the CPU generators of entry ``rank`` (modulo their number, when the world size
    changed), and the CUDA states of the GPUs with global indices ``first_gpu`` to
    ``first_gpu + num_gpus - 1``, taken from all entries in rank order.

    Every process saves the states of its own GPUs in local order, so their concatenation is
    ordered by global device index, whether one process drove several GPUs or each torchrun
    rank drove one; a checkpoint listing every GPU of the saving machine (one process) fits
    the same rule.
    """
    all_cuda = [cuda_state for entry in saved for cuda_state in entry.get("cuda") or []]
    return {**saved[rank % len(saved)], "cuda": all_cuda[first_gpu:first_gpu + num_gpus]}


@dataclass(frozen=True)
class RunStamp:
    """What a resumable state records about the run that wrote it, so that a run that
    resumes from it can be compared with it.

    Attributes:
        world_size: processes of the job.
        num_devices: devices of the whole job (``world_size`` x devices per process; default
            ``world_size``): with the per-device batch it fixes the effective batch.
        config: the frozen config as YAML text; ``train.py`` compares it with the config of a
            run that resumes from the file.
        job: what identifies the job (``train.py``: the config's hash and torchrun's run id);
            a restarted job continues only from its own file.
    """

    world_size: int = 1
    num_devices: int | None = None
    config: str = ""
    job: Mapping[str, str] = field(default_factory=dict)


def save_training_state(
    path: str | os.PathLike,
    *,
    encoder: nn.Module,
    decoder: nn.Module,
    optimizers: Mapping[str, torch.optim.Optimizer],
    iteration: int,
    epoch: int,
    history: Mapping[str, Any],
    rng: list[dict[str, Any]],
    scaler: torch.amp.GradScaler | None = None,
    stamp: RunStamp = RunStamp(),
) -> None:
    """Write the resumable state (see the module docstring) atomically to ``path``.

    Args:
        iteration: number of finished optimisation steps since the start of training.
        epoch: 0-based epoch in progress (``iteration // epoch_iters``).
        rng: one :func:`capture_rng_state` per process, indexed by rank.
        stamp: the run that writes the file.
    """
    atomic_save(
        {
            "format": TRAINING_STATE_FORMAT,
            "epoch": int(epoch),
            "iteration": int(iteration),
            "encoder": state_dict_cpu(encoder),
            "decoder": state_dict_cpu(decoder),
            "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
            "history": dict(history),
            "rng": list(rng),
            "world_size": int(stamp.world_size),
            "num_devices": int(stamp.world_size if stamp.num_devices is None
                               else stamp.num_devices),
            "config": stamp.config,
            "job": dict(stamp.job),
        },
        path,
    )


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a file written by :func:`save_training_state` (tensors on the CPU).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a training state (e.g. an ``encoder_epoch_N.pth``).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"resume checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read resume checkpoint {path}: {exc}") from exc
    missing = [k for k in _REQUIRED if not isinstance(state, dict) or k not in state]
    if missing or state.get("format") != TRAINING_STATE_FORMAT:
        raise ValueError(
            f"{path} is not a resumable training checkpoint (missing {missing or 'format tag'}); "
            f"resume from a {LAST_CHECKPOINT} written by train.py, or load plain weights with "
            "MODEL.weights_encoder / MODEL.weights_decoder"
        )
    return state


def resolve_resume_path(resume: str, out_dir: str) -> str | None:
    """Map ``TRAIN.resume`` / ``--resume`` to a file: ``""`` -> None, ``"auto"`` -> the last
    checkpoint in ``out_dir`` if any (else None), otherwise the given path, which must exist.
    """
    if not resume:
        return None
    if resume == "auto":
        candidate = os.path.join(out_dir, LAST_CHECKPOINT)
        return candidate if os.path.isfile(candidate) else None
    if not os.path.isfile(resume):
        raise FileNotFoundError(f"resume checkpoint not found: {resume}")
    return resume


def is_own_last_checkpoint(path: str | None, out_dir: str) -> bool:
    """``path`` is ``out_dir``'s own :data:`LAST_CHECKPOINT` (a run in ``out_dir`` that resumes
    from it continues that folder's run, and replaces the file)."""
    last = os.path.join(out_dir, LAST_CHECKPOINT)
    return path is not None and os.path.isfile(last) and os.path.samefile(path, last)


def remove_stale_temp_files(out_dir: str) -> list[str]:
    """Delete temporary files left by a run killed while it was writing a checkpoint."""
    stale = glob.glob(os.path.join(out_dir, ".*.pth.*" + TEMP_SUFFIX))
    for path in stale:
        os.remove(path)
        logger.info("Removed unfinished temporary file %s", path)
    return stale
