"""The output folder of a training run: who may use it, what it holds, what it is resumed from.

``train.py`` calls these in this order, before it writes anything to ``DIR`` but the lock,
so that a run refused here leaves the folder as it was: :func:`lock_run_dir` (one run per
``DIR``), :func:`find_resume_state` (the checkpoint to continue from, checked against the
config), :func:`claim_run_dir` (a fresh start never silently replaces an earlier run's files),
then :func:`open_run_dir` (``config.yaml``, ``object_info.csv``, ``log.txt``).

**The lock.** Rank 0 holds an OS lock on ``DIR/train.lock`` (:class:`filelock.FileLock`:
``flock``) for as long as it runs. The kernel drops it when the process ends in any way
(SIGKILL, a crash, an OOM kill), so a lock is never stale; forked children (data-loader
workers) do not inherit it (filelock >= 3.30 closes it in them). ``DIR/train.owner`` notes
who holds it (pid, host, start time, torchrun run id), only to name that run when another is
refused; a note left by a killed run is overwritten by the next. ``train.lock`` itself stays
when the run ends: deleting it would let a starting run lock a file that no longer has a name
while a third locks the new one.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import itertools
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

from filelock import FileLock, Timeout

from mit_semseg.cli import common
from mit_semseg.config import ConfigError, resume_changes
from mit_semseg.data.palette import dataset_classes
from mit_semseg.engine import checkpoint as ckpt
from mit_semseg.engine.distributed import DistContext
from mit_semseg.files import atomic_write_text
from mit_semseg.models.classes import CLASS_TABLE, write_class_table

__all__ = [
    "LOCK_NAME",
    "OWNER_NAME",
    "RunDirLocked",
    "check_resume_config",
    "claim_run_dir",
    "find_resume_state",
    "hold_run_lock",
    "job_identity",
    "lock_run_dir",
    "open_run_dir",
]

logger = logging.getLogger("train")

LOCK_NAME = "train.lock"
OWNER_NAME = "train.owner"
# what train.py and eval.py write into DIR: --overwrite moves these aside, nothing else
RUN_OUTPUTS = ("checkpoint_last.pth", "config.yaml", "object_info.csv", "log.txt",
               "training_curves.png", "*_epoch_*.pth", "eval_metrics.json", "class_iou.csv",
               "confusion_matrix.*", "eval_log.txt", "result")
_EPOCH_WEIGHTS = re.compile(r"^encoder_epoch_(\d+)\.pth$")


class RunDirLocked(ValueError):
    """``DIR`` is used by another training run (a setup error: choose another ``DIR``)."""


# ----------------------------------------------------------------------------- the lock
@contextlib.contextmanager
def hold_run_lock(out_dir: str, run_id: str = "") -> Iterator[None]:
    """Hold the lock of ``out_dir`` (created if missing) and its owner note (module docstring).

    Raises:
        RunDirLocked: another live process holds it; the message names that process.
    """
    os.makedirs(out_dir, exist_ok=True)
    lock = FileLock(os.path.join(out_dir, LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunDirLocked(f"{out_dir} is used by another training run ({_owner(out_dir)}); "
                           "give this run another DIR, or stop that run first") from None
    note = os.path.join(out_dir, OWNER_NAME)
    try:
        atomic_write_text(note, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                            "since": time.time(), "run_id": run_id}))
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(note)
        lock.release()


def _owner(out_dir: str) -> str:
    """``pid P on HOST, torchrun job ID, since TIME`` from the owner note."""
    path = os.path.join(out_dir, OWNER_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            note = json.load(f)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(note["since"]))
        # torchrun's default --rdzv-id "none" is shared by unrelated jobs: it names nothing
        job = f", torchrun job {note['run_id']!r}" if note["run_id"] not in ("", "none") else ""
        return f"pid {note['pid']} on {note['host']}{job}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):  # being written, or not ours
        return f"its owner note {path} is missing or unreadable"


@contextlib.contextmanager
def lock_run_dir(out_dir: str, dist_ctx: DistContext) -> Iterator[None]:
    """Rank 0 holds the lock of ``DIR`` while the run lasts; every rank fails if it is taken.

    Raises:
        RunDirLocked: another run uses ``DIR`` (on every rank).
    """
    with contextlib.ExitStack() as held:
        error = None
        if dist_ctx.is_main:
            try:
                held.enter_context(hold_run_lock(out_dir, dist_ctx.run_id))
            except RunDirLocked as exc:
                error = str(exc)
        error = dist_ctx.gather(error)[0]
        if error is not None:
            raise RunDirLocked(error)
        yield


# ----------------------------------------------------------------------------- what DIR holds
def job_identity(config_text: str, run_id: str) -> dict[str, str]:
    """What ``checkpoint_last.pth`` is stamped with: the config's SHA-256 and torchrun's
    rendezvous id; a torchrun restart continues only from a checkpoint with its own stamp."""
    return {"config_sha256": hashlib.sha256(config_text.encode("utf-8")).hexdigest(),
            "run_id": run_id}


def _run_files(out_dir: str) -> list[str]:
    """The files of an earlier run in ``out_dir`` that a fresh start would replace."""
    names = [ckpt.LAST_CHECKPOINT] if os.path.isfile(
        os.path.join(out_dir, ckpt.LAST_CHECKPOINT)) else []
    return names + sorted(os.path.basename(p)
                          for p in glob.glob(os.path.join(glob.escape(out_dir), "*_epoch_*.pth")))


def claim_run_dir(out_dir: str, dist_ctx: DistContext, resume_path: str | None,
                  start_epoch: int, overwrite: bool) -> None:
    """Refuse a fresh start in a ``DIR`` that holds an earlier run, or, with ``overwrite``,
    move that run's files (:data:`RUN_OUTPUTS`) into ``DIR/previous-<date>-<time>/``.

    A run continues ``DIR``'s own run when it resumes from ``DIR/checkpoint_last.pth`` or
    from an epoch of ``DIR`` (``TRAIN.start_epoch``, the original's way); anything else is a
    fresh start. Rank 0 decides and moves; every rank fails together.

    Raises:
        FileExistsError: ``DIR`` holds a run and ``overwrite`` is off (on every rank).
    """
    error = None
    if dist_ctx.is_main:
        continuing = start_epoch > 0 or ckpt.is_own_last_checkpoint(resume_path, out_dir)
        found = [] if continuing else _run_files(out_dir)
        if found and overwrite:
            _move_aside(out_dir)
        elif found:
            error = _holds_a_run_message(out_dir, found)
    error = dist_ctx.gather(error)[0]
    if error is not None:
        raise FileExistsError(error)


def _holds_a_run_message(out_dir: str, found: list[str]) -> str:
    epochs = sorted(int(m.group(1)) for m in map(_EPOCH_WEIGHTS.match, found) if m)
    what = ", ".join(([ckpt.LAST_CHECKPOINT] if ckpt.LAST_CHECKPOINT in found else [])
                     + ([f"epoch files up to {epochs[-1]}"] if epochs else []))
    how = ("--resume auto" if ckpt.LAST_CHECKPOINT in found or not epochs
           else f"TRAIN.start_epoch {epochs[-1]}")
    return (f"DIR {out_dir} holds an earlier training run ({what}); continue it with {how}, "
            "give this run another DIR, or pass --overwrite to move its files into "
            f"{os.path.join(out_dir, 'previous-<date>-<time>')}")


def _move_aside(out_dir: str) -> None:
    """Move :data:`RUN_OUTPUTS` into a new ``previous-<date>-<time>`` folder of ``out_dir``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in itertools.count():
        aside = os.path.join(out_dir, f"previous-{stamp}" + (f"-{attempt}" if attempt else ""))
        with contextlib.suppress(FileExistsError):
            os.mkdir(aside)
            break
    names = sorted({os.path.basename(p) for pattern in RUN_OUTPUTS
                    for p in glob.glob(os.path.join(glob.escape(out_dir), pattern))})
    for name in names:
        os.rename(os.path.join(out_dir, name), os.path.join(aside, name))
    logger.warning("--overwrite: moved the earlier run's files (%s) into %s", ", ".join(names),
                   aside)


# ----------------------------------------------------------------------------- resuming
def find_resume_state(cfg: Any, dist_ctx: DistContext, num_devices: int,
                      allow_config_change: bool, job: dict[str, str]
                      ) -> tuple[str, dict] | None:
    """The checkpoint to continue from, as ``(path, loaded state)``, or None to start afresh.

    That is, when torchrun has restarted the workers after a failure (``--max-restarts``),
    ``DIR/checkpoint_last.pth`` if this job wrote it (stamped with ``job``, see
    :func:`job_identity`); otherwise ``TRAIN.resume``.

    Raises:
        ConfigError: keys that change what is trained differ from the checkpoint's config
            (without ``--allow-config-change``).
        ValueError: the ranks do not all see the same checkpoint (``DIR`` is not shared).
    """
    path, saved = _restart_checkpoint(cfg.DIR, dist_ctx, job)
    if path is None:
        path = ckpt.resolve_resume_path(cfg.TRAIN.resume, cfg.DIR)
    seen = dist_ctx.gather((socket.gethostname(), path))
    for rank, (host, other) in enumerate(seen):
        if other != path:
            raise ValueError(f"rank 0 {_resumes(path)} but rank {rank} on {host} "
                             f"{_resumes(other)}: DIR ({cfg.DIR}) must be one folder that every "
                             "node shares")
    if path is None:
        return None
    if saved is None:
        saved = ckpt.load_training_state(path)
    check_resume_config(saved, path, cfg, num_devices * dist_ctx.world_size, allow_config_change)
    return path, saved


def _restart_checkpoint(out_dir: str, dist_ctx: DistContext, job: dict[str, str]
                        ) -> tuple[str | None, dict | None]:
    """Under a torchrun restart: ``DIR/checkpoint_last.pth`` and its content, if this job
    wrote it; ``(None, None)`` otherwise."""
    last = os.path.join(out_dir, ckpt.LAST_CHECKPOINT)
    if dist_ctx.restart_count == 0 or not os.path.isfile(last):
        return None, None
    saved = ckpt.load_training_state(last)
    if saved.get("job") != job:
        logger.warning("torchrun restart %d: %s was written by another job, not continuing "
                       "from it", dist_ctx.restart_count, last)
        return None, None
    logger.info("torchrun restart %d: continuing from the last saved state",
                dist_ctx.restart_count)
    return last, saved


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
