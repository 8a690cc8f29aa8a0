import hashlib
import io
import logging
import os
import threading
from pathlib import Path

import pytest
import torch
from local_http import unused_url

from mit_semseg.data.ade20k import ResumableFetch
from mit_semseg.download import (
    DownloadError,
    cache_root,
    cached_download,
    expected_sha256,
    fetch_whole,
)

GOOD = bytes(range(256)) * 1200  # 300 KiB: several read chunks are not needed, one drop is
OTHER = bytes(reversed(range(256))) * 1100


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    for name in ("MIT_SEMSEG_HOME", "TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    assert cache_root() == Path("~/.cache/torch/mit_semseg").expanduser()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "torch" / "mit_semseg"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert cache_root() == tmp_path / "th" / "mit_semseg"
    monkeypatch.setenv("MIT_SEMSEG_HOME", str(tmp_path / "own"))
    assert cache_root() == tmp_path / "own"


def test_first_download_records_the_hash_and_later_loads_need_no_network(http_server,
                                                                          tmp_path):
    url = http_server.serve("/w.pth", GOOD)
    path = tmp_path / "cache" / "w.pth"
    assert cached_download(url, path, progress=True) == path
    assert path.read_bytes() == GOOD
    assert (tmp_path / "cache" / "w.pth.sha256").read_text() == f"{sha(GOOD)}  w.pth\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["w.pth", "w.pth.sha256"]  # no lock
    http_server.close()  # verified from the cache: no request at all
    assert cached_download(url, path).read_bytes() == GOOD
    assert len(http_server.hits("/w.pth")) == 1


def test_a_corrupted_file_is_detected_and_fetched_again(http_server, tmp_path, caplog):
    url = http_server.serve("/w.pth", GOOD)
    path = cached_download(url, tmp_path / "w.pth", progress=False)
    path.write_bytes(GOOD[:-1] + b"\x00")  # one byte flipped on disk
    with caplog.at_level(logging.WARNING, "mit_semseg.download"):
        cached_download(url, path, progress=False)
    assert path.read_bytes() == GOOD
    assert "corrupted or was replaced" in caplog.text
    assert len(http_server.hits("/w.pth")) == 2


def test_a_file_swapped_on_the_server_is_refused_and_nothing_is_left(http_server, tmp_path):
    url = http_server.serve("/w.pth", GOOD)
    path = cached_download(url, tmp_path / "w.pth", progress=False)
    http_server.serve("/w.pth", OTHER)  # the file changes between requests
    path.unlink()
    with pytest.raises(DownloadError) as info:
        cached_download(url, path, progress=False)
    message = str(info.value)
    assert "\n" not in message and url in message
    assert sha(OTHER) in message and sha(GOOD) in message and "w.pth.sha256" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pth.sha256"]
    # the recorded digest is kept; deleting it accepts the new content
    (tmp_path / "w.pth.sha256").unlink()
    assert cached_download(url, path, progress=False).read_bytes() == OTHER


def test_a_user_supplied_hash_is_checked(http_server, tmp_path, monkeypatch):
    url = http_server.serve("/sub/w.pth", GOOD)
    path = tmp_path / "sub" / "w.pth"
    monkeypatch.setenv("MIT_SEMSEG_SHA256", f"other.pth={sha(OTHER)}, sub/w.pth={sha(OTHER)}")
    with pytest.raises(DownloadError, match="from \\$MIT_SEMSEG_SHA256"):
        cached_download(url, path, progress=False)
    assert not path.exists() and not path.with_name("w.pth.part").exists()
    # the longest matching name wins
    monkeypatch.setenv("MIT_SEMSEG_SHA256",
                       f"w.pth={sha(OTHER)} sub/w.pth={sha(GOOD).upper()}")
    assert cached_download(url, path, progress=False).read_bytes() == GOOD
    assert expected_sha256(path) == (sha(GOOD), "from $MIT_SEMSEG_SHA256")
    monkeypatch.setenv("MIT_SEMSEG_SHA256", "w.pth")
    with pytest.raises(DownloadError, match="not NAME=SHA256"):
        cached_download(url, path, progress=False)
    monkeypatch.setenv("MIT_SEMSEG_SHA256", "w.pth=1234")
    with pytest.raises(DownloadError, match="not a SHA-256 digest"):
        cached_download(url, path, progress=False)


def test_a_sha256_file_placed_by_the_user_is_checked(http_server, tmp_path):
    url = http_server.serve("/w.pth", GOOD)
    path = tmp_path / "w.pth"
    (tmp_path / "w.pth.sha256").write_text(f"{sha(OTHER)}  w.pth\n")
    with pytest.raises(DownloadError, match="recorded in"):
        cached_download(url, path, progress=False)
    assert not path.exists()
    (tmp_path / "w.pth.sha256").write_text(sha(GOOD))  # bare digest works too
    assert cached_download(url, path, progress=False).read_bytes() == GOOD
    assert cached_download(url, path, sha256=sha(GOOD)) == path  # caller's digest agrees


def test_offline_and_http_errors_are_one_line_and_leave_no_file(http_server, tmp_path):
    url = unused_url("/w.pth")
    with pytest.raises(DownloadError) as info:
        cached_download(url, tmp_path / "w.pth", progress=False)
    message = str(info.value)
    assert "\n" not in message and url in message and str(tmp_path / "w.pth") in message
    assert "refused" in message.lower()
    missing = http_server.url + "/none.pth"
    with pytest.raises(DownloadError, match="HTTP Error 404") as info:
        cached_download(missing, tmp_path / "none.pth", progress=False)
    assert "\n" not in str(info.value)
    assert len(http_server.hits("/none.pth")) == 1  # an HTTP error is not retried
    assert [p.name for p in tmp_path.iterdir()] == []


@pytest.mark.parametrize("fetch", [ResumableFetch(), fetch_whole], ids=["resumable", "torch.hub"])
def test_concurrent_callers_download_once(http_server, tmp_path, fetch):
    url = http_server.serve("/w.pth", GOOD)
    http_server.delay_s = 0.3
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        cached_download(url, tmp_path / "w.pth", progress=False, fetch=fetch).read_bytes()))
        for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [GOOD, GOOD]
    assert len(http_server.hits("/w.pth")) == 1
    assert os.path.getsize(tmp_path / "w.pth") == len(GOOD)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pth", "w.pth.sha256"]


def test_a_read_only_cache_is_checked_but_never_written(http_server, tmp_path, monkeypatch):
    url = http_server.serve("/w.pth", GOOD)
    path = cached_download(url, tmp_path / "w.pth", progress=False)
    monkeypatch.setattr("mit_semseg.download.os.access", lambda *args: False)
    assert cached_download(url, path) == path  # verified against the record
    path.write_bytes(OTHER)
    with pytest.raises(DownloadError, match="read-only, so it cannot be fetched again"):
        cached_download(url, path)
    assert path.read_bytes() == OTHER and len(http_server.hits("/w.pth")) == 1
    (tmp_path / "w.pth.sha256").unlink()
    assert cached_download(url, path) == path  # nothing to compare with, nothing written
    assert not (tmp_path / "w.pth.sha256").exists()


def weights_check(path):
    """Accepts only a file that torch.load reads (as a check of weights would)."""
    torch.load(path, weights_only=True)


def test_a_body_cut_short_without_length_is_never_recorded(http_server, tmp_path):
    buffer = io.BytesIO()
    torch.save({"w": torch.arange(40_000.0)}, buffer)
    url = http_server.serve("/w.pth", buffer.getvalue())
    http_server.send_length = False
    http_server.drop_next("/w.pth", after_bytes=60_000)
    path = tmp_path / "w.pth"
    (tmp_path / "w.pth.part.0123abcd.partial").write_bytes(b"left by a killed download")
    with pytest.raises(DownloadError) as info:
        cached_download(url, path, progress=False, check=weights_check)
    message = str(info.value)
    assert "\n" not in message and url in message and "not usable" in message
    assert info.value.summary == "the downloaded w.pth is not usable"
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # the server is fixed: fetched again, checked, recorded
    assert cached_download(url, path, progress=False, check=weights_check).read_bytes() == (
        buffer.getvalue())
    assert expected_sha256(path)[0] == sha(buffer.getvalue())


def test_a_present_file_without_record_is_checked_before_it_is_trusted(http_server, tmp_path):
    url = http_server.serve("/w.pth", GOOD)
    path = tmp_path / "w.pth"
    path.write_bytes(b"not weights")  # placed by hand (or cut) before any record exists
    with pytest.raises(DownloadError, match="is not usable .*replace it, or delete it"):
        cached_download(url, path, progress=False, check=weights_check)
    assert path.read_bytes() == b"not weights"  # the user's file is not deleted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pth"]
    assert http_server.hits("/w.pth") == []
