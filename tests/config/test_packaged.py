"""mit_semseg.config.packaged: configs shipped in the package, ``--cfg`` by path or by name."""

import os
from pathlib import Path

import pytest

from mit_semseg.config import load_config, packaged_configs, resolve_config_file
from mit_semseg.config.packaged import PACKAGED_DIR

REPO_ROOT = Path(__file__).resolve().parents[2]
NAME = "ade20k-resnet50dilated-ppm_deepsup"


def test_the_repository_config_folder_is_the_packaged_one():
    # one copy of every recipe: config/ is a link to the package's folder
    repo = sorted(p.name for p in (REPO_ROOT / "config").glob("*.yaml"))
    assert repo == sorted(p.name for p in PACKAGED_DIR.glob("*.yaml"))
    assert (REPO_ROOT / "config").resolve() == PACKAGED_DIR
    assert NAME in packaged_configs() and "synthetic-mobilenetv2dilated-c1_deepsup" in (
        packaged_configs())


@pytest.mark.parametrize("spec", [NAME, f"{NAME}.yaml", f"config/{NAME}.yaml",
                                  f"./config/{NAME}.yaml"])
def test_names_and_the_readme_path_work_from_any_folder(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no config/ here, as for a pip-installed user
    assert resolve_config_file(spec) == PACKAGED_DIR / f"{NAME}.yaml"
    assert load_config(spec).MODEL.arch_decoder == "ppm_deepsup"


def test_an_existing_file_wins_over_a_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    own = tmp_path / "config" / f"{NAME}.yaml"
    own.write_text("TRAIN:\n  num_epoch: 3\n")
    assert resolve_config_file(f"config/{NAME}.yaml") == Path(f"config/{NAME}.yaml")
    assert load_config(f"config/{NAME}.yaml").TRAIN.num_epoch == 3


@pytest.mark.parametrize("spec", [f"my_configs/{NAME}.yaml", "/nowhere/config/x.yaml",
                                  "no-such-config", f"config/{NAME}.txt"])
def test_a_missing_own_file_is_never_replaced_by_a_packaged_one(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        resolve_config_file(spec)
    message = str(info.value)
    assert message.startswith(f"config file not found: {spec} ")
    assert NAME in message  # lists the packaged names


def test_paths_in_the_packaged_configs_are_relative_run_outputs():
    # no packaged config points at an absolute path of the machine it was written on
    for path in packaged_configs().values():
        cfg = load_config(path)
        for value in (cfg.DIR, cfg.DATASET.root_dataset, cfg.TEST.result):
            assert not os.path.isabs(value), (path.name, value)
