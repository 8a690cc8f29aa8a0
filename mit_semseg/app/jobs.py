"""Photos waiting for a model, the model loaded once, and the results kept for the page.

Every request to segment a photo becomes a :class:`Job`. Each model (a released model, or a
run at one epoch) has a :class:`ModelSlot`: the jobs for it wait in line, in the order they
came, and are served one at a time, so a model never runs two photos at once and the page can
show each job's place in line. The first job a slot serves fetches the model's files if it is a
released model not yet in the cache (the page shows the bytes received) and loads it; the
module is then kept for every later job. Different models serve their lines side by side.

The network runs in a worker thread, so the server keeps answering (status polls, other models,
downloads) while it computes. A job that fails (download, loading, inference) ends in the
``error`` state with a one-line message; the slot stays usable and the server keeps serving.

The :class:`JobBoard` holds the jobs and the last results (:class:`~mit_semseg.app.segment.
Segmentation`), both by unguessable ids.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from mit_semseg.app.catalog import ModelChoice
from mit_semseg.app.segment import Segmentation, segment

__all__ = ["Job", "JobBoard", "LeftTheLine", "ModelSlot"]

logger = logging.getLogger(__name__)

# the files a download leaves beside the weights that are not weights
_NOT_WEIGHTS = (".lock", ".sha256", ".validator")


class LeftTheLine(Exception):
    """A job was taken out of line (cancelled) before its turn came."""


@dataclass(eq=False)
class Job:
    """One photo for one model.

    ``state`` goes ``queued`` -> (``downloading`` ->) (``loading`` ->) ``running`` -> ``done``,
    or ends in ``error`` (with ``message``) or ``cancelled``.
    """

    id: str
    choice: ModelChoice
    epoch: int
    mode: str
    photo_name: str
    sample: dict[str, Any] | None
    state: str = "queued"
    message: str = ""
    load_seconds: float | None = None
    result: Segmentation | None = None
    created: float = field(default_factory=time.monotonic)

    @property
    def finished(self) -> bool:
        return self.state in ("done", "error", "cancelled")


class ModelSlot:
    """One model at one epoch: loaded on first use and kept; serves one job at a time, the
    others wait in the order they came."""

    def __init__(self, choice: ModelChoice, epoch: int) -> None:
        self.choice = choice
        self.epoch = epoch
        self.module: Any = None
        self._line: list[Job] = []  # _line[0] is being served
        self._turn = asyncio.Condition()

    def position(self, job: Job) -> int | None:
        """How many jobs are ahead of ``job`` (0: it is being served); None when it is not in
        line."""
        return self._line.index(job) if job in self._line else None

    def join(self, job: Job) -> None:
        """``job`` takes the last place in line."""
        self._line.append(job)

    def leave(self, job: Job) -> bool:
        """Takes a waiting ``job`` out of line; False once it is being served."""
        if job not in self._line[1:]:
            return False
        self._line.remove(job)
        return True

    async def serve(self, job: Job, work: Callable[[], Any]) -> Any:
        """Waits until ``job`` is first in line, then awaits ``work()``; the next job's turn
        comes when it ends, however it ends.

        Raises:
            LeftTheLine: the job left the line before its turn.
        """
        async with self._turn:
            await self._turn.wait_for(lambda: job not in self._line or self._line[0] is job)
        if job not in self._line:
            raise LeftTheLine(job.id)
        try:
            return await work()
        finally:
            self._line.remove(job)
            async with self._turn:
                self._turn.notify_all()

    async def wake(self) -> None:
        """Lets waiting jobs see that the line changed (one left)."""
        async with self._turn:
            self._turn.notify_all()


class JobBoard:
    """The jobs, the model slots and the last results of a server.

    Args:
        device: where the models run.
        keep_results: how many results are kept for the page (oldest dropped first).
        keep_jobs: how many finished jobs are remembered.
    """

    def __init__(self, device: torch.device, keep_results: int = 16, keep_jobs: int = 256
                 ) -> None:
        self.device = device
        self.keep_results = keep_results
        self.keep_jobs = keep_jobs
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._results: OrderedDict[str, Segmentation] = OrderedDict()
        self._slots: dict[tuple[int, int], ModelSlot] = {}

    def slot(self, choice: ModelChoice, epoch: int) -> ModelSlot:
        key = (id(choice), epoch)
        if key not in self._slots:
            self._slots[key] = ModelSlot(choice, epoch)
        return self._slots[key]

    def submit(self, choice: ModelChoice, epoch: int, mode: str, photo_name: str,
               sample: dict[str, Any]) -> Job:
        """A new job, in line for its model; :meth:`run` it (in a task) to have it served."""
        job = Job(secrets.token_urlsafe(12), choice, epoch, mode, photo_name, sample)
        self._jobs[job.id] = job
        self._forget_old_jobs()
        self.slot(choice, epoch).join(job)
        return job

    def job(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def result(self, job_id: str) -> Segmentation | None:
        return self._results.get(job_id)

    async def cancel(self, job: Job) -> bool:
        """Cancels a job still waiting in line; False once it is being served or finished."""
        slot = self.slot(job.choice, job.epoch)
        if job.finished or not slot.leave(job):
            return False
        job.state, job.sample = "cancelled", None
        await slot.wake()
        return True

    async def run(self, job: Job) -> None:
        """Serves ``job`` when its turn comes; every failure ends in its ``error`` state."""
        slot = self.slot(job.choice, job.epoch)
        try:
            await slot.serve(job, lambda: self._work(slot, job))
        except LeftTheLine:
            pass  # cancelled while waiting: its state says so
        except Exception as error:  # noqa: BLE001 - one failed photo must not stop the server
            job.state, job.message = "error", _one_line(error)
            logger.warning("%s on %s: %s", job.photo_name, job.choice.label, job.message)
            logger.debug("traceback", exc_info=True)
        finally:
            job.sample = None

    async def _work(self, slot: ModelSlot, job: Job) -> None:
        if slot.module is None:
            start = time.perf_counter()
            if job.choice.needs_download():
                job.state = "downloading"
            trained = await asyncio.to_thread(job.choice.trained_model, job.epoch)
            job.state = "loading"
            slot.module = await asyncio.to_thread(trained.load, self.device)
            job.load_seconds = time.perf_counter() - start
            logger.info("loaded %s epoch %d in %.1f s", job.choice.label, job.epoch,
                        job.load_seconds)
        job.state = "running"
        result = await asyncio.to_thread(
            segment, slot.module, job.sample, job.choice, job.epoch, job.mode, self.device,
            job.photo_name)
        self._results[job.id] = result
        while len(self._results) > self.keep_results:
            self._results.popitem(last=False)
        job.result, job.state = result, "done"

    def status(self, job: Job) -> dict[str, Any]:
        """What the page shows of ``job`` (JSON-ready)."""
        answer: dict[str, Any] = {"job": job.id, "state": job.state, "model": job.choice.key,
                                  "epoch": job.epoch, "mode": job.mode}
        if job.state == "queued":
            answer["ahead"] = self.slot(job.choice, job.epoch).position(job)
        elif job.state == "downloading":
            answer["received_bytes"] = _bytes_in(job.choice.download_folder())
        elif job.state == "error":
            answer["message"] = job.message
        elif job.state == "done" and job.result is not None:
            result = job.result
            height, width = result.labels.shape
            answer.update(
                width=width, height=height, seconds=round(result.seconds, 3),
                load_seconds=None if job.load_seconds is None else round(job.load_seconds, 3),
                shares=[[c, round(f, 6)] for c, f in result.shares()],
                kept=job.id in self._results, file_stem=result.file_stem(),
            )
        return answer

    def _forget_old_jobs(self) -> None:
        finished = [key for key, job in self._jobs.items() if job.finished]
        for key in finished[: max(0, len(finished) - self.keep_jobs)]:
            del self._jobs[key]


def _bytes_in(folder: Any) -> int:
    """Bytes of weights (finished or partial) in a download folder so far."""
    try:
        return sum(p.stat().st_size for p in folder.iterdir()
                   if p.is_file() and not p.name.endswith(_NOT_WEIGHTS))
    except OSError:  # not created yet, or a file renamed while listing
        return 0


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__
