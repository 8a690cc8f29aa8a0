"""mit_semseg.files: atomic writes."""

import os
import stat

import pytest

from mit_semseg.files import atomic_write, atomic_write_text


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
