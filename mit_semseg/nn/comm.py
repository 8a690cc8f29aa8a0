"""Thread rendezvous used by SyncBN replicas inside one process (DataParallel).

One :class:`SyncMaster` exists per SyncBN layer position and per replication (i.e. per
forward of the wrapper). Replica 0 is the master; replicas ``1..k-1`` talk to it through a
:class:`SlavePipe`. In every round each slave posts a message, the master collects all of
them, runs its callback once and hands every slave its own result.

Unlike the original implementation, nothing here can block forever:

* every wait has a deadline (``timeout`` seconds) after which the whole rendezvous is
  aborted, so the other replicas fail as well instead of waiting on a dead peer;
* :meth:`SyncMaster.abort` (called by the parallel runner when any replica raises) wakes
  every waiter at once with a :class:`SyncError` naming the cause;
* :meth:`SyncMaster.depart` (called when a replica's forward returns) lets waiters notice a
  peer that finished without joining the current round, which is what happens when the
  replicas do not call the synchronised layers the same number of times.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, Callable

__all__ = ["DEFAULT_TIMEOUT", "SlavePipe", "SyncError", "SyncMaster"]

#: Seconds a replica waits for its peers before the rendezvous is declared dead. Replicas run
#: the same network on similar inputs, so they normally arrive within milliseconds of each
#: other; the generous default only has to cover very unbalanced inputs on slow CPUs.
DEFAULT_TIMEOUT = 300.0

MasterCallback = Callable[[list[tuple[int, Any]]], list[tuple[int, Any]]]


class SyncError(RuntimeError):
    """Raised in a replica when the synchronisation it takes part in cannot complete."""


class SyncMaster:
    """Rendezvous point owned by replica 0 of one synchronised layer.

    Args:
        master_callback: called once per round in the master's thread with
            ``[(copy_id, message), ...]`` sorted by ``copy_id`` (the master's own message
            first, ``copy_id`` 0); must return ``[(copy_id, result), ...]`` in the same order.
        timeout: seconds any participant waits for the others before giving up.
    """

    def __init__(self, master_callback: MasterCallback, timeout: float = DEFAULT_TIMEOUT):
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self._callback = master_callback
        self._timeout = float(timeout)
        self._cond = threading.Condition()
        self._slave_ids: list[int] = []
        self._messages: dict[int, Any] = {}
        self._results: dict[int, Any] = {}
        self._departed: set[int] = set()
        self._error: str | None = None
        self._round = 0

    @property
    def nr_slaves(self) -> int:
        """Number of registered slave replicas."""
        return len(self._slave_ids)

    def register_slave(self, identifier: int) -> SlavePipe:
        """Register replica ``identifier`` (>= 1) and return its pipe to the master."""
        if identifier < 1:
            raise ValueError(f"slave identifiers start at 1 (0 is the master), got {identifier}")
        with self._cond:
            if identifier in self._slave_ids:
                raise ValueError(f"replica {identifier} is already registered with this master")
            self._slave_ids.append(identifier)
        return SlavePipe(self, identifier)

    def abort(self, reason: str) -> None:
        """Make every current and future wait on this rendezvous raise :class:`SyncError`."""
        with self._cond:
            if self._error is None:
                self._error = reason
            self._cond.notify_all()

    def depart(self, identifier: int) -> None:
        """Record that replica ``identifier`` finished its forward (normally or not)."""
        with self._cond:
            self._departed.add(identifier)
            self._cond.notify_all()

    def run_master(self, message: Any) -> Any:
        """Master side of one round: collect, call back, distribute; returns the master's result."""
        with self._cond:
            self._wait(
                lambda: all(i in self._messages for i in self._slave_ids),
                lambda: [i for i in self._slave_ids if i not in self._messages],
                "the master (replica 0) waits for",
            )
            inbox = [(0, message)] + sorted(self._messages.items())
            self._messages.clear()
        try:
            results = self._callback(inbox)
            if [i for i, _ in results] != [i for i, _ in inbox]:
                raise RuntimeError("SyncMaster callback must answer every replica, in order")
        except BaseException as exc:
            self.abort(f"the master (replica 0) failed in round {self._round}: "
                       f"{type(exc).__name__}: {exc}")
            raise
        with self._cond:
            self._results.update(results[1:])
            self._round += 1
            self._cond.notify_all()
        return results[0][1]

    def _exchange(self, identifier: int, message: Any) -> Any:
        with self._cond:
            if self._error is not None:
                raise SyncError(self._error)
            self._messages[identifier] = message
            self._cond.notify_all()
            self._wait(
                lambda: identifier in self._results,
                lambda: [0],
                f"replica {identifier} waits for",
            )
            return self._results.pop(identifier)

    def _wait(
        self,
        ready: Callable[[], bool],
        missing: Callable[[], Sequence[int]],
        who: str,
    ) -> None:
        """Wait on the condition (lock held) until ``ready()``, an abort, a departure or timeout."""
        deadline = time.monotonic() + self._timeout
        while True:
            if self._error is not None:
                raise SyncError(self._error)
            if ready():
                return
            gone = [i for i in missing() if i in self._departed]
            if gone:
                self._error = (
                    f"{who} replica(s) {gone} in round {self._round}, but they already returned "
                    "from their forward: every replica must call each synchronised layer the "
                    "same number of times"
                )
                self._cond.notify_all()
                raise SyncError(self._error)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._error = (
                    f"{who} replica(s) {list(missing())} in round {self._round} and gave up "
                    f"after {self._timeout:g} s"
                )
                self._cond.notify_all()
                raise SyncError(self._error)
            self._cond.wait(remaining)


class SlavePipe:
    """A slave replica's handle on its master."""

    def __init__(self, master: SyncMaster, identifier: int):
        self.master = master
        self.identifier = identifier

    def run_slave(self, message: Any) -> Any:
        """Send ``message`` to the master and block until this replica's result arrives."""
        return self.master._exchange(self.identifier, message)
