"""mit_semseg.compat and the original's import paths (mit_semseg.utils, mit_semseg.dataset,
mit_semseg.models.ModelBuilder)."""

import ast
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mit_semseg.models
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
    from mit_semseg import dataset, metrics, utils, viz
    from mit_semseg.cli import devices
    from mit_semseg.data import datasets

    assert utils.accuracy is metrics.accuracy
    assert utils.intersectionAndUnion is metrics.intersectionAndUnion
    assert utils.colorEncode is viz.colorEncode
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
    assert importers == {"utils.py", "dataset.py", "models/__init__.py"}


def test_importing_every_models_module_leaves_compat_unloaded():
    code = ("import pkgutil, sys, importlib, mit_semseg.models as m\n"
            "for info in pkgutil.walk_packages(m.__path__, 'mit_semseg.models.'):\n"
            "    importlib.import_module(info.name)\n"
            "print('mit_semseg.compat' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"


# ------------------------------------------------------------------- mit_semseg.models


def test_the_originals_model_imports_work():
    from mit_semseg.compat import ModelBuilder as served
    from mit_semseg.models import ModelBuilder, SegmentationModule

    assert ModelBuilder is served and SegmentationModule.__module__.startswith("mit_semseg")
    with pytest.raises(AttributeError, match="no attribute 'ModelBulder'"):
        _ = mit_semseg.models.ModelBulder


def test_model_builder_builds_the_originals_layout_and_loads_its_files(tmp_path):
    from mit_semseg.models import ModelBuilder, SegmentationModule, build_decoder, build_encoder

    torch.save(build_encoder("resnet18dilated").state_dict(), tmp_path / "enc.pth")
    torch.save(build_decoder("ppm_deepsup", 6, fc_dim=512).state_dict(), tmp_path / "dec.pth")
    # The original's eval.py calls, positional and by keyword.
    encoder = ModelBuilder.build_encoder("resnet18dilated", 512, str(tmp_path / "enc.pth"))
    decoder = ModelBuilder.build_decoder(arch="ppm_deepsup", fc_dim=512, num_class=6,
                                         weights=str(tmp_path / "dec.pth"), use_softmax=True)
    assert decoder.in_channels == [256, 512]
    model = SegmentationModule(encoder, decoder, torch.nn.NLLLoss(ignore_index=-1)).eval()
    with torch.no_grad():
        probs = model({"img_data": torch.randn(1, 3, 32, 32)}, segSize=(20, 20))
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 20, 20))
    with pytest.raises(RuntimeError, match="enc.pth"):  # strict, naming the file
        ModelBuilder.build_decoder("c1", 512, 6, str(tmp_path / "enc.pth"))


def test_model_builder_checks_fc_dim_against_given_widths():
    from mit_semseg.models import ModelBuilder

    widths = [64, 128, 256, 512]
    assert ModelBuilder.build_decoder("upernet_lite", 512, 6,
                                      in_channels=widths).in_channels == widths
    with pytest.raises(ValueError, match="MODEL.fc_dim=2048 .* set MODEL.fc_dim to 512"):
        ModelBuilder.build_decoder("upernet_lite", 2048, 6, in_channels=widths)


def test_unknown_arch_through_model_builder_lists_valid_names():
    from mit_semseg.models import ENCODERS, ModelBuilder

    with pytest.raises(KeyError) as info:
        ModelBuilder.build_encoder("resnet34dilated")
    assert all(name in str(info.value) for name in ENCODERS.names())


def test_weights_init_is_the_originals_decoder_init():
    from mit_semseg.models import ModelBuilder

    module = torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3), torch.nn.BatchNorm2d(64))
    module.apply(ModelBuilder.weights_init)
    assert torch.all(module[1].weight == 1) and torch.allclose(module[1].bias,
                                                                torch.full((64,), 1e-4))
    assert module[0].weight.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.05)
