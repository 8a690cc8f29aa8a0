"""What happens between two training steps: periodic checkpoints and a clean stop on a signal.

Schedulers send SIGTERM some time before they kill a job (SLURM at its time limit or on
preemption, Kubernetes when it evicts a pod, torchrun's agent when it shuts its workers down),
and Ctrl-C sends SIGINT. :class:`SignalWatch` turns the first such signal into a request to
stop; :class:`RunControl`, called after every optimisation step, makes the ranks agree on it,
writes ``checkpoint_last.pth`` (every rank takes part) and raises :class:`TrainingInterrupted`,
which ``train.py`` reports in one line before exiting with status 128 + signal number (130 for
SIGINT, 143 for SIGTERM, what a shell shows for a process killed by that signal).

A second signal exits at once with the same status; the atomic writes leave the previous
checkpoint intact. Signals within :data:`REPEAT_WINDOW_S` of the first count as the same
request: torchrun's agent relays the signal it gets to its workers, which a terminal's Ctrl-C
or a SLURM ``scancel`` have already signalled directly, so a worker sees it twice within
milliseconds.

The ranks agree through one all-reduce (maximum) of two numbers per step: the signal received
(0 for none) and rank 0's "the time-based checkpoint is due". Ranks may receive a signal at
different steps; they all stop after the first step at whose end any of them had it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from mit_semseg.engine.trainer import ResumableCheckpoint, TrainState

__all__ = ["REPEAT_WINDOW_S", "RunControl", "SignalWatch", "TrainingInterrupted", "signal_name"]

logger = logging.getLogger(__name__)

REPEAT_WINDOW_S = 1.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_name(signum: int) -> str:
    """``"SIGTERM"`` for 15 (the number itself if Python does not know it)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


class TrainingInterrupted(Exception):
    """A signal stopped training after ``iteration`` steps; the resumable state is saved."""

    def __init__(self, signum: int, iteration: int) -> None:
        super().__init__(f"stopped by {signal_name(signum)} after iteration {iteration}")
        self.signum = signum
        self.iteration = iteration

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process killed by that signal."""
        return 128 + self.signum


class SignalWatch:
    """Records the first SIGINT/SIGTERM while active (a context manager); a later one, at least
    ``repeat_window_s`` after the first, ends the process at once.

    Handlers can only be installed by the main thread; elsewhere the watch stays inactive and
    the signals keep their previous behaviour.
    """

    def __init__(self, signals: Sequence[int] = STOP_SIGNALS,
                 repeat_window_s: float = REPEAT_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.signals = tuple(signals)
        self.repeat_window_s = repeat_window_s
        self.clock = clock
        self.signum: int | None = None
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalWatch:
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        now = self.clock()
        if self.signum is None:
            self.signum, self._first_at = signum, now
            logger.info("Got %s: finishing the current step, then saving the resumable state "
                        "(send it again to exit at once)", signal_name(signum))
        elif now - self._first_at >= self.repeat_window_s:
            # not through logging: its handlers may be half-way through a record right now
            os.write(2, f"got {signal_name(signum)} again: exiting at once\n".encode())
            os._exit(128 + signum)


class RunControl:
    """The ``on_step`` hook of the training loop (see the module docstring).

    Args:
        checkpoint: writes ``checkpoint_last.pth``; its ``every`` (iterations) still applies.
        signals: the watch whose request stops the run.
        every_seconds: also write the checkpoint when this long has passed since the last
            write (rank 0's clock decides; 0 = off).
        clock: seconds, monotonic (replaced in tests).
    """

    def __init__(self, checkpoint: ResumableCheckpoint, signals: SignalWatch,
                 every_seconds: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.checkpoint = checkpoint
        self.signals = signals
        self.every_seconds = every_seconds
        self.clock = clock
        self._saved_at = clock()

    def save(self, state: TrainState) -> None:
        """Write the resumable state now (a collective: every rank calls it)."""
        self.checkpoint.save(state)
        self._saved_at = self.clock()

    def __call__(self, state: TrainState) -> None:
        """After a step: save if due, then raise :class:`TrainingInterrupted` if asked to stop.

        At an epoch's last step nothing is saved here: the end-of-epoch code writes the
        epoch's files, then the resumable state.
        """
        time_due = (state.dist_ctx.is_main and self.every_seconds > 0
                    and self.clock() - self._saved_at >= self.every_seconds)
        local = torch.tensor([float(self.signals.signum or 0), float(time_due)],
                             dtype=torch.float64, device=state.device)
        signum, time_due = (int(v) for v in state.dist_ctx.max(local).tolist())
        epoch_end = state.iteration % state.epoch_iters == 0
        if not epoch_end and (signum or time_due or self.checkpoint.due(state)):
            self.save(state)
        if signum:
            raise TrainingInterrupted(signum, state.iteration)
