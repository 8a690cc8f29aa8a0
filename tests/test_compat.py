"""mit_semseg.compat: the names kept only for the original's users."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mit_semseg
import mit_semseg.models

PACKAGE = Path(mit_semseg.__file__).parent


def _imported_names(node):
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""] + [alias.name for alias in node.names]
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    return []


def test_the_package_never_imports_the_compat_module():
    # Allowed: a module-level ``__getattr__`` that serves an original name on first access.
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "compat.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for statement in tree.body:
            if isinstance(statement, ast.FunctionDef) and statement.name == "__getattr__":
                continue
            for node in ast.walk(statement):
                names = _imported_names(node)
                if any(n.split(".")[-1] == "compat" or n == "ModelBuilder" for n in names):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []


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
