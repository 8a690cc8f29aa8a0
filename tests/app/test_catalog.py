import logging

import pytest
import torch

from mit_semseg.app.catalog import (
    MODES,
    RunFolderError,
    released_choices,
    run_choice,
    run_choices,
    run_epochs,
    single_scale,
)
from mit_semseg.config import ConfigError, load_config
from mit_semseg.data.palette import dataset_palette, resolve_class_names
from mit_semseg.models import zoo

CPU = torch.device("cpu")


@pytest.mark.parametrize("sizes,scale", [((300, 375, 450, 525, 600), 450), ((96,), 96),
                                          ((64, 96), 96), ((600, 300, 450), 450)])
def test_single_scale_is_the_middle_of_the_scales(sizes, scale):
    assert single_scale(sizes) == scale


def test_released_models_come_with_their_recipes_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("MIT_SEMSEG_HOME", str(tmp_path))
    choices = released_choices()
    assert [c.key for c in choices] == zoo.list_models()
    for choice in choices:
        release = zoo.get_model(choice.key)
        cfg = load_config(release.config, release.config_opts())  # what test.py --model runs
        assert (choice.kind, choice.epochs, choice.num_class) == ("released", (release.epoch,),
                                                                  150)
        assert (choice.arch_encoder, choice.arch_decoder, choice.fc_dim) == \
            (release.arch_encoder, release.arch_decoder, release.fc_dim)
        assert choice.class_names == tuple(resolve_class_names(150, cfg.DATASET.root_dataset))
        assert (choice.palette == dataset_palette(150, cfg.DATASET.root_dataset)).all()
        assert choice.scales("single") == (450,)
        assert choice.scales("multi") == (300, 375, 450, 525, 600)
        assert choice.needs_download()
        assert choice.download_folder() == tmp_path / "models" / release.name


def test_each_mode_scales_and_predicts_as_its_switch_says(runs):
    choice = run_choice(runs[0].folder, "run-1", CPU)
    assert set(MODES) == {"single", "multi"}
    assert choice.dataset_options("single") == {"imgSizes": (96,), "imgMaxSize": 256,
                                                "padding_constant": 8}
    assert choice.dataset_options("multi")["imgSizes"] == (64, 96, 128)
    assert not choice.predict_options("single").flip and choice.predict_options("multi").flip
    assert choice.predict_options("single").window is None
    with pytest.raises(ValueError, match="unknown mode 'both'; choose one of single, multi"):
        choice.dataset_options("both")


def test_a_run_folder_offers_every_epoch_with_its_own_classes(runs):
    alpha, beta = runs
    choice = run_choice(alpha.folder, "run-1", CPU)
    assert (choice.key, choice.kind, choice.epochs, choice.latest_epoch) == \
        ("run-1", "run", (1, 2), 2)
    assert choice.label == "alpha"
    assert choice.class_names == tuple(resolve_class_names(8, alpha.data))
    assert choice.class_names[1] == "red disc"
    assert not choice.needs_download()
    model = choice.trained_model(1)
    assert model.weight_files() == {"encoder": alpha.folder / "encoder_epoch_1.pth",
                                    "decoder": alpha.folder / "decoder_epoch_1.pth"}
    assert not model.fast_inference  # the run's config says so (conftest)
    with pytest.raises(ValueError, match="has no epoch 3; choose one of 1, 2"):
        choice.trained_model(3)
    assert run_choice(beta.folder, "run-2", CPU).epochs == (3,)


def test_run_epochs_needs_both_files(tmp_path):
    for name in ("encoder_epoch_2.pth", "decoder_epoch_2.pth", "encoder_epoch_10.pth",
                 "decoder_epoch_10.pth", "encoder_epoch_3.pth", "encoder_epoch_x.pth",
                 "checkpoint_last.pth"):
        (tmp_path / name).touch()
    assert run_epochs(tmp_path) == [2, 10]


def _set(folder, key, value):
    """Rewrites the run's config.yaml with ``key`` set to ``value``."""
    config = folder / "config.yaml"
    config.write_text(load_config(config, [key, value]).dump())


def _copy_run(run, target):
    target.mkdir()
    for path in run.folder.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


@pytest.mark.parametrize("problem,message", [
    ("missing", "no such folder"),
    ("no_config", "no config.yaml in it"),
    ("no_weights", "no encoder_epoch_N.pth with its decoder_epoch_N.pth"),
    ("fp16", "TEST.amp 'fp16' needs a CUDA device"),
])
def test_a_folder_that_is_no_run_is_refused_with_one_line(runs, tmp_path, problem, message):
    folder = tmp_path / "run"
    if problem != "missing":
        _copy_run(runs[0], folder)
    if problem == "no_config":
        (folder / "config.yaml").unlink()
    elif problem == "no_weights":
        for path in folder.glob("decoder_*"):
            path.unlink()
    elif problem == "fp16":
        _set(folder, "TEST.amp", "fp16")
    with pytest.raises(RunFolderError, match=message) as error:
        run_choice(folder, "run-1", CPU)
    assert str(folder) in str(error.value) and "\n" not in str(error.value)


def test_a_broken_config_names_its_key(runs, tmp_path):
    folder = _copy_run(runs[0], tmp_path / "run")
    (folder / "config.yaml").write_text("MODEL:\n  arch_encodr: resnet50\n")
    with pytest.raises(ConfigError, match="arch_encodr"):
        run_choice(folder, "run-1", CPU)


def test_another_backend_is_run_by_torch_with_a_warning(runs, tmp_path, caplog):
    folder = _copy_run(runs[0], tmp_path / "run")
    _set(folder, "MODEL.backend", "onnxruntime")
    with caplog.at_level(logging.WARNING):
        choice = run_choice(folder, "run-1", CPU)
    assert "MODEL.backend onnxruntime; the app runs the torch backend" in caplog.text
    assert choice.trained_model(2).backend == "torch"


def test_runs_are_keyed_in_order_and_labelled_by_their_folders(runs, tmp_path):
    alpha, beta = runs
    (tmp_path / "other").mkdir()
    twin = _copy_run(alpha, tmp_path / "other" / "alpha")
    choices = run_choices([alpha.folder, beta.folder, twin], CPU)
    assert [c.key for c in choices] == ["run-1", "run-2", "run-3"]
    assert [c.label for c in choices] == [f"{alpha.folder.parent.name}/alpha", "beta",
                                          "other/alpha"]
