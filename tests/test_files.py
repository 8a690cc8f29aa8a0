"""mit_semseg.files: atomic writes, the lock file that goes away."""

import os
import stat
import threading

import pytest

from mit_semseg import files
from mit_semseg.files import atomic_write, atomic_write_text, exclusive_lock


def test_atomic_write_failure_keeps_old_file(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")

    def half_then_fail(f):
        f.write(b"new but inc")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["f.txt"]  # the temporary file was removed


def test_atomic_write_permissions_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "p.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "p.txt").st_mode) == 0o644


def test_exclusive_lock_is_deleted_on_release_and_held_by_one_at_a_time(tmp_path):
    lock, counter = tmp_path / "f.lock", tmp_path / "count"
    counter.write_text("0")

    def add_ones():
        for _ in range(50):
            with exclusive_lock(lock):  # a read-modify-write that loses counts unless exclusive
                counter.write_text(str(int(counter.read_text()) + 1))

    threads = [threading.Thread(target=add_ones) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counter.read_text() == "200"
    assert sorted(os.listdir(tmp_path)) == ["count"]  # no lock file left


@pytest.mark.skipif(files.fcntl is None, reason="flock: the Unix implementation")
def test_a_waiter_on_a_deleted_lock_file_takes_the_new_one(tmp_path, monkeypatch):
    # B opens the lock file while A holds it; A deletes it and lets go. B then holds a lock on
    # a file nobody else can see: it must lock the file the path names instead, or a third
    # process creating a new lock file would hold it at the same time.
    lock = tmp_path / "f.lock"
    b_opened, b_inside, b_may_leave = threading.Event(), threading.Event(), threading.Event()
    real_flock = files.fcntl.flock

    def flock(fd, operation):
        if threading.current_thread().name == "B":
            b_opened.set()
        return real_flock(fd, operation)

    monkeypatch.setattr(files.fcntl, "flock", flock)

    def b():
        with exclusive_lock(lock):
            b_inside.set()
            b_may_leave.wait(60)

    with exclusive_lock(lock):  # A
        waiter = threading.Thread(target=b, name="B")
        waiter.start()
        assert b_opened.wait(60)
    assert b_inside.wait(60)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)  # a third process, without waiting
    try:
        with pytest.raises(BlockingIOError):
            real_flock(fd, files.fcntl.LOCK_EX | files.fcntl.LOCK_NB)
    finally:
        os.close(fd)
        b_may_leave.set()
        waiter.join()
