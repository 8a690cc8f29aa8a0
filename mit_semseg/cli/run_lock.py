"""One training run per output folder: the lock file ``DIR/train.lock``.

Two runs writing to one ``DIR`` would delete each other's temporary files and overwrite each
other's checkpoints, so the process that writes (rank 0) holds a lock file for as long as it
runs. The file is JSON naming its owner: host, PID namespace, pid, the process' start time (so
that a recycled pid is not taken for the owner), torchrun's run id and restart count, and a
random token that tells this lock from a later one.

A lock whose owner is gone is *stale* and is taken over with a log line. Stale means:

* the owner ran on this host (same host name and PID namespace) and its process no longer
  exists, or its pid now belongs to a younger process (SIGKILL, a crash, an OOM kill); or
* the owner was an earlier incarnation of this torchrun job: the same rendezvous id
  (``--rdzv-id``, not the default ``none``) with a lower restart count. torchrun stops every
  worker of every node before it restarts them, so that process is gone even when it ran on
  another node (after a restart, rank 0 may run elsewhere).

Any other lock belongs to a run that may be alive; :meth:`RunLock.acquire` then raises
:class:`RunDirLocked` naming the owner and the file. A lock left by a machine that crashed
cannot be judged from another machine: the message says to delete the file by hand.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["LOCK_NAME", "LockOwner", "RunDirLocked", "RunLock"]

logger = logging.getLogger(__name__)

LOCK_NAME = "train.lock"
# torchrun's default --rdzv-id: shared by unrelated jobs, so it identifies nothing
_ANONYMOUS_RUN_IDS = ("", "none")
# a lock file is written in one small write; a reader that finds it empty or cut short retries
_READ_ATTEMPTS = 5
_READ_PAUSE_S = 0.05


class RunDirLocked(ValueError):
    """``DIR`` is used by another training run (a setup error: choose another ``DIR``)."""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:  # no /proc (macOS): the host name alone identifies the pid space
        return ""


def _process_start(pid: int) -> str:
    """The kernel's start time of process ``pid`` (clock ticks since boot), "" if unknown.

    Unknown means: no such process, or no ``/proc`` on this system.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return ""
    # the command name (field 2) is in parentheses and may contain spaces; field 22 is the
    # start time, the 20th field after the closing parenthesis
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[19]


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@dataclass(frozen=True)
class LockOwner:
    """Who holds a lock (the content of the lock file)."""

    host: str
    pid_namespace: str
    pid: int
    process_start: str
    run_id: str
    restart_count: int
    since: float
    token: str

    @classmethod
    def current(cls, run_id: str = "", restart_count: int = 0) -> LockOwner:
        pid = os.getpid()
        return cls(host=socket.gethostname(), pid_namespace=_pid_namespace(), pid=pid,
                   process_start=_process_start(pid), run_id=run_id,
                   restart_count=restart_count, since=time.time(), token=uuid.uuid4().hex)

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        job = f", torchrun job {self.run_id!r}" if self.run_id not in _ANONYMOUS_RUN_IDS else ""
        return f"pid {self.pid} on {self.host}{job}, since {started}"

    def stale_reason(self, me: LockOwner) -> str | None:
        """Why this owner is certainly gone, as seen by ``me``; None if it may be alive."""
        if (self.host, self.pid_namespace) == (me.host, me.pid_namespace):
            if not _pid_exists(self.pid):
                return f"process {self.pid} no longer exists"
            start = _process_start(self.pid)
            if start and self.process_start and start != self.process_start:
                return f"pid {self.pid} now belongs to another process"
        if (self.run_id not in _ANONYMOUS_RUN_IDS and self.run_id == me.run_id
                and self.restart_count < me.restart_count):
            return (f"it was restart {self.restart_count} of this torchrun job, now at restart "
                    f"{me.restart_count}")
        return None


class RunLock:
    """The lock of one output folder (see the module docstring); a context manager.

    Args:
        folder: the run's ``DIR`` (created if missing).
        run_id, restart_count: this process' torchrun rendezvous id and restart count.
    """

    def __init__(self, folder: str | os.PathLike, run_id: str = "",
                 restart_count: int = 0) -> None:
        self.path = os.path.join(os.fspath(folder), LOCK_NAME)
        self.owner = LockOwner.current(run_id, restart_count)
        self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, taking over a stale one.

        Raises:
            RunDirLocked: another run that may be alive holds it.
        """
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        # a stale lock is removed, then creation is tried again: a third run may win that race
        for _ in range(3):
            if self._create():
                self.held = True
                return
            other = self._read()
            reason = other.stale_reason(self.owner) if other is not None else None
            if reason is None:
                raise RunDirLocked(self._in_use_message(other))
            self._remove_stale(other, reason)
        raise RunDirLocked(self._in_use_message(self._read()))

    def release(self) -> None:
        """Delete the lock file if it is still ours (a no-op otherwise)."""
        if not self.held:
            return
        self.held = False
        current = self._read()
        if current is not None and current.token == self.owner.token:
            os.remove(self.path)

    # ------------------------------------------------------------------------- helpers
    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(asdict(self.owner), f)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:  # e.g. a full disk: leave no empty lock behind
            os.remove(self.path)
            raise
        return True

    def _read(self) -> LockOwner | None:
        """The owner named in the lock file; None if the file is gone.

        Raises:
            RunDirLocked: the file stays unreadable (not a lock this package wrote).
        """
        for _ in range(_READ_ATTEMPTS):
            try:
                with open(self.path, encoding="utf-8") as f:
                    return LockOwner(**json.load(f))
            except FileNotFoundError:
                return None
            except (ValueError, TypeError):  # being written right now, or foreign
                time.sleep(_READ_PAUSE_S)
        raise RunDirLocked(f"{self.path} exists but is not a lock file of train.py; if no run "
                           "uses this folder, delete it")

    def _remove_stale(self, stale: LockOwner, reason: str) -> None:
        """Move the stale lock aside, and delete it if it still is the one judged stale."""
        aside = f"{self.path}.{self.owner.token}.stale"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:  # another starting run removed it first
            return
        try:
            with open(aside, encoding="utf-8") as f:
                moved = LockOwner(**json.load(f))
        except (OSError, ValueError, TypeError):
            moved = None
        if moved is None or moved.token != stale.token:
            # between reading and moving, a starting run replaced the stale lock: give it back
            os.rename(aside, self.path)
            raise RunDirLocked(self._in_use_message(moved))
        os.remove(aside)
        logger.warning("Took over the stale lock %s of %s: %s", self.path, stale.describe(),
                       reason)

    def _in_use_message(self, other: LockOwner | None) -> str:
        who = other.describe() if other is not None else "an unknown process"
        return (f"{os.path.dirname(self.path)} is used by another training run ({who}; lock "
                f"file {self.path}); give this run another DIR, or, if that run is gone (e.g. "
                "its machine crashed), delete the lock file")
