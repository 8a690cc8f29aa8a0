"""The original 1.0.0's import paths (mit_semseg.utils, mit_semseg.dataset, mit_semseg.lib.nn):
thin shims that give the package's own objects."""

import ast
import logging
from pathlib import Path

import pytest

import mit_semseg


def test_original_import_paths_give_the_package_objects():
    from mit_semseg import dataset, metrics, utils, viz
    from mit_semseg.cli import devices
    from mit_semseg.data import datasets, odgt

    assert utils.accuracy is metrics.accuracy
    assert utils.intersectionAndUnion is metrics.intersectionAndUnion
    assert utils.colorEncode is viz.colorEncode
    assert utils.parse_devices is devices.parse_devices
    assert utils.NotSupportedCliException is devices.NotSupportedCliException
    assert utils.AverageMeter is metrics.AverageMeter
    assert utils.find_recursive is odgt.find_recursive
    for name in ("TrainDataset", "ValDataset", "TestDataset"):
        assert getattr(dataset, name) is getattr(datasets, name)
    with pytest.raises(AttributeError):
        utils.no_such_name  # noqa: B018


def test_setup_logger_logs_info_to_the_console():
    from mit_semseg import utils

    logger = utils.setup_logger(distributed_rank=0)
    assert logger.getEffectiveLevel() == logging.INFO
    utils.setup_logger(distributed_rank=1)
    assert logging.getLogger().level == logging.WARNING
    utils.setup_logger(0)  # leave the console logger of rank 0 behind


SHIMS = ("utils.py", "dataset.py", "lib/__init__.py", "lib/nn/__init__.py")


def test_the_original_import_paths_are_thin_shims_that_nothing_imports():
    package_dir = Path(mit_semseg.__file__).parent
    for shim in SHIMS:
        tree = ast.parse((package_dir / shim).read_text(encoding="utf-8"))
        kinds = {type(node).__name__ for node in tree.body}
        # a docstring, imports and __all__, nothing that defines behaviour
        assert kinds <= {"Expr", "Import", "ImportFrom", "Assign"}, (shim, kinds)
    shim_modules = {"mit_semseg.utils", "mit_semseg.dataset", "mit_semseg.lib", "mit_semseg.lib.nn"}
    for path in package_dir.rglob("*.py"):
        if path.relative_to(package_dir).as_posix() in SHIMS:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module not in shim_modules, path
                assert not (node.module == "mit_semseg"
                            and {a.name for a in node.names} & {"utils", "dataset", "lib"}), path
