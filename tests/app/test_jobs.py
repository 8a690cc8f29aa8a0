"""The line of jobs per model, without a server: asyncio on stand-ins for the model and the
segmentation (the server tests run the real ones)."""

import asyncio
import threading
from types import SimpleNamespace

import pytest
import torch

from mit_semseg.app import jobs as jobs_module
from mit_semseg.app.jobs import Job, JobBoard, LeftTheLine, ModelSlot


class _Choice:
    """What a job needs of a model: its key, label, files and loading."""

    def __init__(self, key, folder, loads):
        self.key = self.label = key
        self.folder = folder
        self.loads = loads

    def needs_download(self):
        return False

    def download_folder(self):
        return self.folder

    def trained_model(self, epoch):
        def load(device):
            self.loads.append((self.key, epoch))
            return f"module of {self.key}"
        return SimpleNamespace(load=load)


def _result(name):
    return SimpleNamespace(name=name, labels=torch.zeros(2, 3).numpy(), seconds=0.5,
                           shares=lambda: [(0, 1.0)], file_stem=lambda: name)


def _job(choice, name="p.jpg"):
    return Job(name, choice, 1, "single", name, {"img_ori": None})


def test_a_slot_serves_in_arrival_order_one_at_a_time():
    async def scenario():
        slot = ModelSlot(_Choice("m", None, []), 1)
        jobs = [_job(slot.choice, f"j{i}") for i in range(4)]
        served, running = [], []

        async def work(job):
            running.append(job.id)
            assert len(running) == 1
            await asyncio.sleep(0)
            served.append(job.id)
            running.remove(job.id)

        for job in jobs:
            slot.join(job)
        assert [slot.position(j) for j in jobs] == [0, 1, 2, 3]
        assert slot.leave(jobs[2]) and not slot.leave(jobs[0])  # the first is being served
        assert slot.position(jobs[2]) is None and slot.position(jobs[3]) == 2
        tasks = [asyncio.ensure_future(slot.serve(j, lambda j=j: work(j))) for j in jobs[::-1]]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[1], LeftTheLine)  # jobs[2], which left
        return served

    assert asyncio.run(scenario()) == ["j0", "j1", "j3"]


def test_the_board_loads_once_keeps_results_and_reports_every_state(tmp_path, monkeypatch):
    loads = []
    started, release = threading.Event(), threading.Event()

    def fake_segment(module, sample, choice, epoch, mode, device, name):
        assert module == f"module of {choice.key}" and sample == {"img_ori": None}
        started.set()
        assert release.wait(30)
        return _result(name)

    monkeypatch.setattr(jobs_module, "segment", fake_segment)

    async def scenario():
        board = JobBoard(torch.device("cpu"), keep_results=2, keep_jobs=3)
        choice = _Choice("m", tmp_path, loads)
        jobs = [board.submit(choice, 1, "single", f"p{i}.jpg", {"img_ori": None})
                for i in range(4)]
        tasks = [asyncio.ensure_future(board.run(j)) for j in jobs]
        await asyncio.to_thread(started.wait, 30)
        states = [board.status(j) for j in jobs]
        assert states[0]["state"] == "running"
        assert [s["ahead"] for s in states[1:]] == [1, 2, 3]
        assert await board.cancel(jobs[3]) and not await board.cancel(jobs[0])
        release.set()
        await asyncio.gather(*tasks)
        return board, jobs

    board, jobs = asyncio.run(scenario())
    assert loads == [("m", 1)]  # loaded by the first job, kept for the others
    assert [j.state for j in jobs] == ["done", "done", "done", "cancelled"]
    assert all(j.sample is None for j in jobs)  # the photos are not kept
    assert board.result(jobs[0].id) is None  # only the last two results are kept
    assert board.result(jobs[2].id).name == "p2.jpg"
    status = board.status(jobs[2])
    assert status["kept"] and status["shares"] == [[0, 1.0]] and status["width"] == 3
    assert not board.status(jobs[0])["kept"]
    board.submit(jobs[0].choice, 1, "single", "new.jpg", {})
    assert board.job(jobs[0].id) is None and board.job(jobs[3].id) is not None  # oldest gone


def test_a_download_reports_the_bytes_of_weights_in_its_folder(tmp_path):
    board = JobBoard(torch.device("cpu"))
    job = _job(_Choice("release", tmp_path / "release", []))
    job.state = "downloading"
    assert board.status(job)["received_bytes"] == 0  # no folder yet
    folder = tmp_path / "release"
    folder.mkdir()
    (folder / "encoder_epoch_20.pth").write_bytes(bytes(1000))
    (folder / "decoder_epoch_20.pth.part").write_bytes(bytes(300))
    (folder / "encoder_epoch_20.pth.sha256").write_text("ab  encoder_epoch_20.pth\n")
    (folder / "decoder_epoch_20.pth.lock").touch()
    assert board.status(job)["received_bytes"] == 1300


def test_a_failure_is_one_line_and_the_next_job_is_served(monkeypatch):
    calls = []

    def flaky(module, sample, choice, epoch, mode, device, name):
        calls.append(name)
        if len(calls) == 1:
            raise MemoryError()
        return _result(name)

    monkeypatch.setattr(jobs_module, "segment", flaky)

    async def scenario():
        board = JobBoard(torch.device("cpu"))
        choice = _Choice("m", None, [])
        first = board.submit(choice, 1, "single", "a.jpg", {})
        second = board.submit(choice, 1, "single", "b.jpg", {})
        await asyncio.gather(board.run(first), board.run(second))
        return first, second

    first, second = asyncio.run(scenario())
    assert (first.state, first.message) == ("error", "MemoryError")
    assert second.state == "done"


@pytest.mark.parametrize("state", ["done", "error", "cancelled"])
def test_finished_jobs_are_finished(state):
    job = _job(_Choice("m", None, []))
    job.state = state
    assert job.finished
