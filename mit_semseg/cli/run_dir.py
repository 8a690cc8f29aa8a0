"""The output folder of a training run: who may use it, what it is resumed from.

``train.py`` calls these in this order, before it writes anything to ``DIR``, so that a run
refused here leaves the folder as it was: :func:`lock_run_dir` (one run per ``DIR``),
:func:`find_resume_state` (the checkpoint to continue from, checked against the config), then
:func:`open_run_dir` (``config.yaml``, ``object_info.csv``, ``log.txt``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

from mit_semseg.cli import common
from mit_semseg.cli.run_lock import RunDirLocked, RunLock
from mit_semseg.config import ConfigError, resume_changes
from mit_semseg.data.palette import dataset_classes
from mit_semseg.engine import checkpoint as ckpt
from mit_semseg.engine.distributed import DistContext
from mit_semseg.files import atomic_write_text
from mit_semseg.models.classes import CLASS_TABLE, write_class_table

__all__ = ["check_resume_config", "find_resume_state", "lock_run_dir", "open_run_dir"]

logger = logging.getLogger("train")


@contextlib.contextmanager
def lock_run_dir(out_dir: str, dist_ctx: DistContext) -> Iterator[None]:
    """Rank 0 holds ``DIR/train.lock`` while the run lasts; every rank fails if it is taken.

    Raises:
        RunDirLocked: another run uses ``DIR`` (on every rank).
    """
    lock = RunLock(out_dir, dist_ctx.run_id, dist_ctx.restart_count) if dist_ctx.is_main else None
    error = None
    if lock is not None:
        try:
            lock.acquire()
        except RunDirLocked as exc:
            error = str(exc)
    error = dist_ctx.gather(error)[0]
    if error is not None:
        raise RunDirLocked(error)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def find_resume_state(cfg: Any, dist_ctx: DistContext, num_devices: int,
                      allow_config_change: bool) -> tuple[str, dict] | None:
    """The checkpoint to continue from, as ``(path, loaded state)``, or None to start afresh.

    That is ``TRAIN.resume``, or, when torchrun has restarted the workers after a failure
    (``--max-restarts``), ``DIR/checkpoint_last.pth`` if the failed run wrote one.

    Raises:
        ConfigError: keys that change what is trained differ from the checkpoint's config
            (without ``--allow-config-change``).
        ValueError: the ranks do not all see the same checkpoint (``DIR`` is not shared).
    """
    resume = cfg.TRAIN.resume
    if dist_ctx.restart_count > 0 and os.path.isfile(os.path.join(cfg.DIR, ckpt.LAST_CHECKPOINT)):
        resume = "auto"
        logger.info("torchrun restart %d: continuing from the last saved state",
                    dist_ctx.restart_count)
    path = ckpt.resolve_resume_path(resume, cfg.DIR)
    seen = dist_ctx.gather((socket.gethostname(), path))
    for rank, (host, other) in enumerate(seen):
        if other != path:
            raise ValueError(f"rank 0 {_resumes(path)} but rank {rank} on {host} "
                             f"{_resumes(other)}: DIR ({cfg.DIR}) must be one folder that every "
                             "node shares")
    if path is None:
        return None
    saved = ckpt.load_training_state(path)
    check_resume_config(saved, path, cfg, num_devices * dist_ctx.world_size, allow_config_change)
    return path, saved


def _resumes(path: str | None) -> str:
    return f"resumes from {path}" if path else "finds no checkpoint to resume from"


def check_resume_config(saved: dict, source: str, cfg: Any, num_devices: int,
                        allow_config_change: bool) -> None:
    """Compare the keys that change what is trained, and the number of devices, with those
    the checkpoint was trained with (see :data:`mit_semseg.config.RESUME_MAY_CHANGE`).

    Raises:
        ConfigError: one names every difference, ``KEY old -> new``.
    """
    changes = [f"{key} {old!r} -> {new!r}"
               for key, old, new in resume_changes(saved["config"], cfg)] if saved["config"] else []
    if saved.get("num_devices", num_devices) != num_devices:  # files written before it existed
        changes.append(f"devices (processes x devices per process) {saved['num_devices']} -> "
                       f"{num_devices}")
    if not changes:
        return
    if allow_config_change:
        logger.warning("%s was trained with a different config; continuing with the new one "
                       "(--allow-config-change): %s", source, "; ".join(changes))
        return
    raise ConfigError(f"{source} was trained with a different config: {'; '.join(changes)}; "
                      "resume with the old values, or pass --allow-config-change to continue "
                      "with the new ones")


def open_run_dir(cfg: Any, cfg_file: str, dist_ctx: DistContext) -> None:
    """Rank 0 deletes what a killed run left half-written and writes ``config.yaml`` and the
    class table ``object_info.csv`` (the dataset's names, synonyms and colours, so that the
    run folder says what its model predicts: evaluation, ``test.py`` and ``MODEL.init_from``
    read it); the log goes to ``DIR/log.txt`` from now on."""
    if dist_ctx.is_main:
        ckpt.remove_stale_temp_files(cfg.DIR)
        atomic_write_text(os.path.join(cfg.DIR, "config.yaml"), cfg.dump())
        classes = dataset_classes(cfg.DATASET.num_class, cfg.DATASET.root_dataset)
        write_class_table(os.path.join(cfg.DIR, CLASS_TABLE), classes.synonyms, classes.palette)
    common.setup_logging(cfg.DIR, dist_ctx.rank)
    logger.info("Loaded configuration file %s\n%s", cfg_file, cfg.dump())
