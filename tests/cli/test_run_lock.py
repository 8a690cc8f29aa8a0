"""mit_semseg.cli.run_lock: one run per output folder, stale locks taken over."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from mit_semseg.cli.run_lock import LOCK_NAME, LockOwner, RunDirLocked, RunLock


def _write_lock(folder, **changes):
    """A lock file as another process would have written it (this process by default)."""
    owner = dataclasses.replace(LockOwner.current(), **changes)
    folder.mkdir(exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps(dataclasses.asdict(owner)))
    return owner


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_names_its_owner_and_refuses_a_second_run(tmp_path):
    out = tmp_path / "run"
    with RunLock(out, run_id="job-7") as lock:
        content = json.loads((out / LOCK_NAME).read_text())
        assert (content["pid"], content["run_id"]) == (os.getpid(), "job-7")
        with pytest.raises(RunDirLocked) as error:
            RunLock(out).acquire()
        message = str(error.value)
        assert f"pid {os.getpid()} on {content['host']}, torchrun job 'job-7'" in message
        assert f"lock file {out / LOCK_NAME}" in message and "another DIR" in message
        assert lock.held
    assert not (out / LOCK_NAME).exists()


def test_release_leaves_a_lock_that_is_not_ours(tmp_path):
    lock = RunLock(tmp_path)
    lock.acquire()
    other = _write_lock(tmp_path, token="someone-else")  # e.g. taken over after we hung
    lock.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == other.token


def test_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path, caplog):
    pid = _dead_pid()
    _write_lock(tmp_path, pid=pid)
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"Took over the stale lock {tmp_path / LOCK_NAME}" in caplog.text
    assert f"process {pid} no longer exists" in caplog.text
    assert not list(tmp_path.iterdir())  # the stale file is gone too


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_recycled_pid_is_not_taken_for_the_owner(tmp_path, caplog):
    _write_lock(tmp_path, process_start="1")  # our pid, but "started" at another time
    with RunLock(tmp_path):
        pass
    assert f"pid {os.getpid()} now belongs to another process" in caplog.text


@pytest.mark.parametrize(
    "owner, mine, stale",
    [
        # another machine: its pid cannot be checked from here
        ({"host": "elsewhere", "pid": 1}, {}, False),
        # an earlier incarnation of this torchrun job (restart 0 -> 1), wherever it ran
        ({"host": "elsewhere", "run_id": "job-7", "restart_count": 0},
         {"run_id": "job-7", "restart_count": 1}, True),
        # same restart count: may be alive
        ({"host": "elsewhere", "run_id": "job-7", "restart_count": 1},
         {"run_id": "job-7", "restart_count": 1}, False),
        # torchrun's default rendezvous id is shared by unrelated jobs
        ({"host": "elsewhere", "run_id": "none", "restart_count": 0},
         {"run_id": "none", "restart_count": 1}, False),
        # another PID namespace (container) on this host: its pid means nothing here
        ({"pid_namespace": "pid:[1]", "pid": 1 << 30}, {}, False),
    ],
)
def test_stale_or_possibly_alive(tmp_path, owner, mine, stale):
    _write_lock(tmp_path, **owner)
    lock = RunLock(tmp_path, **mine)
    if stale:
        lock.acquire()
        lock.release()
    else:
        with pytest.raises(RunDirLocked, match="is used by another training run"):
            lock.acquire()
        assert (tmp_path / LOCK_NAME).exists()


def test_a_foreign_file_is_not_taken_for_a_lock(tmp_path):
    (tmp_path / LOCK_NAME).write_text("not json")
    with pytest.raises(RunDirLocked, match="is not a lock file of train.py"):
        RunLock(tmp_path).acquire()
