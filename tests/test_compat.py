"""mit_semseg.compat and the original's import paths (mit_semseg.utils, mit_semseg.dataset)."""

import ast
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from mit_semseg import compat
from mit_semseg.utils import AverageMeter, find_recursive


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


def test_find_recursive_sorted(tmp_path):
    for name in ("b/2.jpg", "a/1.jpg", "a/3.png", "c.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [os.path.relpath(p, tmp_path) for p in find_recursive(str(tmp_path))]
    assert found == ["c.jpg", os.path.join("a", "1.jpg"), os.path.join("b", "2.jpg")]


def test_original_import_paths_give_the_package_objects():
    from mit_semseg import dataset, metrics, utils, visualize
    from mit_semseg.cli import devices
    from mit_semseg.data import datasets

    assert utils.accuracy is metrics.accuracy
    assert utils.intersectionAndUnion is metrics.intersectionAndUnion
    assert utils.colorEncode is visualize.colorEncode
    assert utils.parse_devices is devices.parse_devices
    assert utils.NotSupportedCliException is devices.NotSupportedCliException
    assert utils.AverageMeter is compat.AverageMeter
    for name in ("TrainDataset", "ValDataset", "TestDataset"):
        assert getattr(dataset, name) is getattr(datasets, name)
    with pytest.raises(AttributeError):
        utils.no_such_name  # noqa: B018


def test_setup_logger_logs_info_to_the_console():
    logger = compat.setup_logger(distributed_rank=0)
    assert logger.getEffectiveLevel() == logging.INFO
    compat.setup_logger(distributed_rank=1)
    assert logging.getLogger().level == logging.WARNING
    compat.setup_logger(0)  # leave the console logger of rank 0 behind


def _imported_modules(path: Path, package_dir: Path) -> set[str]:
    """Absolute names of the modules a file of the package imports (relative ones resolved)."""
    parts = ["mit_semseg", *path.relative_to(package_dir).with_suffix("").parts]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = parts[: len(parts) - node.level] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_compat_is_imported_only_by_the_original_import_paths():
    package_dir = Path(compat.__file__).parent
    importers = {path.relative_to(package_dir).as_posix()
                 for path in package_dir.rglob("*.py")
                 if "mit_semseg.compat" in _imported_modules(path, package_dir)}
    assert importers == {"utils.py", "dataset.py"}
