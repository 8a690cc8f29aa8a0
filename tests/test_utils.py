"""mit_semseg.utils: device parsing, meters, logging setup, atomic writes."""

import logging
import os
import stat

import numpy as np
import pytest
import torch

from mit_semseg import utils
from mit_semseg.utils import (
    AverageMeter,
    NotSupportedCliException,
    atomic_write,
    atomic_write_text,
    find_recursive,
    parse_devices,
    resolve_devices,
    setup_logging,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0-3", [0, 1, 2, 3]),  # examples from upstream_spec.md §4.1
        ("0,2,gpu5,6-7", [0, 2, 5, 6, 7]),
        ("3-0", [0, 1, 2, 3]),
        ("gpu1-gpu2", [1, 2]),
        ("gpu1-3", [1, 2, 3]),
        (" GPU4 , 4,1", [4, 1]),
    ],
)
def test_parse_devices_original_syntax(text, expected):
    assert parse_devices(text) == [f"gpu{i}" for i in expected]


@pytest.mark.parametrize("text", ["cpu", "x", "0-", "gpu", "1.5", ""])
def test_parse_devices_rejects_garbage(text):
    with pytest.raises(NotSupportedCliException, match="Can not recognize device"):
        parse_devices(text)


def test_resolve_devices():
    cpu = torch.device("cpu")
    assert resolve_devices("cpu", cuda_count=4) == [cpu]
    assert resolve_devices("cpux3", cuda_count=0) == [cpu] * 3
    assert resolve_devices("auto", cuda_count=0) == [cpu]
    assert resolve_devices("auto", cuda_count=2) == [torch.device("cuda", 0)]
    assert resolve_devices("cuda:1", cuda_count=2) == [torch.device("cuda", 1)]
    assert resolve_devices("0,gpu1", cuda_count=2) == [torch.device("cuda", i) for i in (0, 1)]
    with pytest.raises(NotSupportedCliException, match=r"GPU\(s\) \[2, 3\].*2 CUDA device"):
        resolve_devices("0-3", cuda_count=2)
    with pytest.raises(NotSupportedCliException, match="CPU replicas"):
        resolve_devices("cpux0", cuda_count=0)
    with pytest.raises(NotSupportedCliException, match='"gpux"'):
        resolve_devices("gpux", cuda_count=0)


def test_average_meter_is_weighted():
    meter = AverageMeter()
    meter.update(1.0, weight=1)
    meter.update(4.0, weight=3)
    assert meter.value() == 4.0
    assert meter.average() == pytest.approx((1 + 12) / 4)
    arrays = AverageMeter()
    arrays.update(np.array([1.0, 2.0]))
    arrays.update(np.array([3.0, 6.0]))
    np.testing.assert_allclose(arrays.sum, [4.0, 8.0])


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


def test_setup_logging_rank_aware(tmp_path):
    setup_logging(str(tmp_path / "r0"), rank=0)
    logging.getLogger("mit_semseg.test").info("hello from rank 0")
    assert "hello from rank 0" in (tmp_path / "r0" / "log.txt").read_text()
    setup_logging(str(tmp_path / "r1"), rank=1)
    assert logging.getLogger().level == logging.WARNING
    assert not (tmp_path / "r1" / "log.txt").exists()
    setup_logging(None, rank=0)  # leave a plain console logger behind


def test_find_recursive_sorted(tmp_path):
    for name in ("b/2.jpg", "a/1.jpg", "a/3.png", "c.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [os.path.relpath(p, tmp_path) for p in find_recursive(str(tmp_path))]
    assert found == ["c.jpg", os.path.join("a", "1.jpg"), os.path.join("b", "2.jpg")]


def test_original_metric_names_are_forwarded():
    from mit_semseg import metrics

    assert utils.accuracy is metrics.accuracy
    assert utils.intersectionAndUnion is metrics.intersectionAndUnion
    with pytest.raises(AttributeError):
        utils.no_such_name  # noqa: B018
