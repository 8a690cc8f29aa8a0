"""``--model NAME`` in eval.py, eval_multipro.py and test.py, and test.py's fallback to the
released model of a packaged recipe, against a local mirror (tests/local_http.py) that serves
the smallest zoo model with random weights in the original's server layout."""

import json
import shutil

import numpy as np
import pytest
from eval_fixtures import CFG
from local_http import serve_zoo_model, unused_url

from mit_semseg.models.zoo import get_model, list_models

SMALL = "ade20k-mobilenetv2dilated-c1_deepsup"
RELEASE = get_model(SMALL)
SCRIPTS = ("eval.py", "eval_multipro.py", "test.py")


@pytest.fixture
def mirror(http_server, tmp_path, monkeypatch):
    """The mirror in $MIT_SEMSEG_MODEL_MIRROR, an empty cache in $MIT_SEMSEG_HOME, and the
    test's folder as the working directory (where ckpt/<NAME> goes)."""
    serve_zoo_model(http_server, SMALL)
    monkeypatch.setenv("MIT_SEMSEG_MODEL_MIRROR", http_server.url)
    monkeypatch.setenv("MIT_SEMSEG_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return http_server


def _data_opts(tiny_run, **extra):
    """The tiny run's data and test settings, without its DIR and checkpoint: the released
    model's come from --model. One scale, and MODEL.fast_inference False skips the
    convolution-plan timing."""
    pairs = dict(zip(*[iter(tiny_run.overrides())] * 2))
    for key in ("DIR", "VAL.checkpoint", "TEST.checkpoint"):
        del pairs[key]
    pairs.update({"DATASET.imgSizes": "(48,)", "MODEL.fast_inference": "False", **extra})
    return [token for pair in pairs.items() for token in pair]


def _cached_files(tmp_path):
    folder = tmp_path / "home" / "models" / SMALL
    return folder, [folder / name for name in RELEASE.file_names()]


def _served(server, name):
    return server.files[f"/{SMALL}/{name}"].content


def test_eval_and_eval_multipro_run_a_released_model_into_ckpt_name_or_dir(
        mirror, tiny_run, tmp_path, in_process, inline_workers):
    code, out = in_process("eval.py", "--model", SMALL, "--gpus", "cpu", *_data_opts(tiny_run))
    assert code == 0, out
    folder, files = _cached_files(tmp_path)
    assert [f.read_bytes() for f in files] == [_served(mirror, n) for n in RELEASE.file_names()]
    results = tmp_path / "ckpt" / SMALL  # results beside the user's runs, never in the cache
    metrics = json.loads((results / "eval_metrics.json").read_text())
    assert metrics["checkpoint"] == str(folder / "{encoder,decoder}_epoch_20.pth")
    assert len(metrics["per_class"]) == 150
    assert not (folder / "eval_metrics.json").exists()
    confusion = np.load(results / "confusion_matrix.npy")
    assert confusion.shape == (150, 150) and confusion.sum() > 0
    requests = len(mirror.requests)
    code, out = in_process("eval_multipro.py", "--model", SMALL, "--gpus", "cpu", "--workers",
                           "2", *_data_opts(tiny_run, DIR=str(tmp_path / "mine")))
    assert code == 0, out
    assert inline_workers == ["fork"]  # MODEL.backend torch
    assert len(mirror.requests) == requests  # cached and verified: nothing downloaded again
    mine = json.loads((tmp_path / "mine" / "eval_metrics.json").read_text())
    assert mine["checkpoint"] == metrics["checkpoint"] and mine["processes"] == 2
    np.testing.assert_array_equal(np.load(tmp_path / "mine" / "confusion_matrix.npy"),
                                  confusion)


def test_test_py_runs_a_released_model(mirror, tiny_run, tmp_path, in_process):
    code, out = in_process("test.py", "--imgs", str(tiny_run.data / "validation.odgt"),
                           "--model", SMALL, "--gpus", "cpu",
                           *_data_opts(tiny_run, **{"TEST.result": "out"}))
    assert code == 0, out
    assert len(list((tmp_path / "out").glob("val_*.png"))) == 3
    assert all(f.is_file() for f in _cached_files(tmp_path)[1])
    assert not (tmp_path / "ckpt").exists()  # test.py writes to TEST.result only


@pytest.mark.parametrize("verbose", [False, True])
@pytest.mark.parametrize("script", SCRIPTS)
def test_offline_is_one_short_line_naming_the_files_and_the_folder(
        script, verbose, tiny_run, tmp_path, monkeypatch, in_process):
    monkeypatch.setenv("MIT_SEMSEG_MODEL_MIRROR", unused_url("/mirror"))
    monkeypatch.setenv("MIT_SEMSEG_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    imgs = ["--imgs", str(tiny_run.data / "validation.odgt")] if script == "test.py" else []
    code, out, err = in_process(script, *imgs, "--model", SMALL, "--gpus", "cpu",
                                *(["--verbose"] if verbose else []), *_data_opts(tiny_run),
                                streams=True)
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith(f"{script}: error:")]
    assert len(errors) == 1 and "Traceback" not in out + err
    folder = f"{_cached_files(tmp_path)[0]}/"
    assert folder in errors[0] and "MIT_SEMSEG_MODEL_MIRROR" in errors[0]
    assert all(name in errors[0] for name in RELEASE.file_names())
    if verbose:  # the details: both URLs and the network error
        assert all(url in errors[0] for url in RELEASE.urls()) and "refused" in errors[0]
    else:
        assert "http" not in errors[0] and "--verbose" in errors[0]
        assert len(errors[0].replace(folder, "")) < 250, errors[0]
    home = list((tmp_path / "home").rglob("*"))
    assert not any(p.suffix in (".pth", ".lock") for p in home), home  # no lock file left


def test_a_cut_download_without_length_is_never_trusted_and_is_fetched_again(
        mirror, tiny_run, tmp_path, in_process):
    # a server that sends no Content-Length and closes the connection early: the body looks
    # complete to any byte count; only loading it as the model's weights tells
    mirror.send_length = False
    mirror.drop_next(f"/{SMALL}/{RELEASE.file_names()[0]}", after_bytes=20_000)
    args = ["--imgs", str(tiny_run.data / "validation.odgt"), "--model", SMALL, "--gpus", "cpu",
            *_data_opts(tiny_run, **{"TEST.result": "out"})]
    code, out, err = in_process("test.py", *args, streams=True)
    assert code == 2 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"test.py: error: released model {SMALL}: the downloaded ")
    assert "encoder_epoch_20.pth is not usable" in line
    folder, files = _cached_files(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == []  # nothing recorded, nothing kept
    # the server is fixed: the next run fetches the file again, nobody deletes anything
    code, out = in_process("test.py", *args)
    assert code == 0, out
    assert [f.read_bytes() for f in files] == [_served(mirror, n) for n in RELEASE.file_names()]
    assert len(list((tmp_path / "out").glob("val_*.png"))) == 3


@pytest.mark.parametrize("script", SCRIPTS)
def test_an_unknown_model_lists_the_names(script, tiny_run, in_process):
    imgs = ["--imgs", str(tiny_run.data / "validation.odgt")] if script == "test.py" else []
    code, out, err = in_process(script, *imgs, "--model", "ade20k-resnet50-uppernet",
                                streams=True)
    assert code == 2 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"{script}: error: --model: unknown pretrained model")
    assert "did you mean 'ade20k-resnet50-upernet'" in line
    assert all(name in line for name in list_models())


@pytest.mark.parametrize("script,key", [("eval.py", "VAL.checkpoint"),
                                        ("test.py", "TEST.checkpoint")])
def test_a_checkpoint_beside_model_is_refused(script, key, tiny_run, in_process):
    # the released files have their own epoch: another one would be silently ignored
    imgs = ["--imgs", str(tiny_run.data / "validation.odgt")] if script == "test.py" else []
    code, out, err = in_process(script, *imgs, "--model", SMALL, key, "epoch_3.pth",
                                streams=True)
    assert code == 2 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"{script}: error: --model {SMALL} runs its released epoch 20")
    assert f"drop {key}" in line


def _recipe_opts(tiny_run):
    """The packaged ADE20K recipe with the tiny images' sizes; DIR stays the recipe's."""
    return ["DATASET.imgSizes", "(48,)", "DATASET.imgMaxSize", "96",
            "MODEL.fast_inference", "False"]


def test_test_py_falls_back_to_the_released_model_of_a_recipe_with_no_weights(
        mirror, tiny_run, tmp_path, in_process):
    args = ["--imgs", str(tiny_run.data / "validation.odgt"), "--cfg", SMALL, "--gpus", "cpu"]
    code, out = in_process("test.py", *args, *_recipe_opts(tiny_run), "TEST.result", "out")
    assert code == 0, out
    assert f"DIR ckpt/{SMALL} holds no weights: running the released model {SMALL}" in out
    assert len(list((tmp_path / "out").glob("val_*.png"))) == 3
    assert all(f.is_file() for f in _cached_files(tmp_path)[1])
    # no fallback: DIR on the command line, a user's own config, or evaluation
    own = tmp_path / "own.yaml"
    shutil.copy(CFG.with_name(f"{SMALL}.yaml"), own)
    requests = len(mirror.requests)
    for argv in ([*args, *_recipe_opts(tiny_run), "DIR", "empty"],
                 [*args[:2], "--cfg", str(own), "--gpus", "cpu", *_recipe_opts(tiny_run)]):
        code, out = in_process("test.py", *argv)
        assert code == 2 and "checkpoint file(s) not found" in out
        assert "released model" not in out.replace("run a released model with --model", "")
    code, out = in_process("eval.py", "--cfg", SMALL, "--gpus", "cpu", *_recipe_opts(tiny_run),
                           "DATASET.root_dataset", str(tiny_run.data), "DATASET.list_val",
                           str(tiny_run.data / "validation.odgt"))
    assert code == 2 and f"ckpt/{SMALL}/encoder_epoch_20.pth" in out
    assert "checkpoint file(s) not found" in out and "--model NAME" in out
    assert len(mirror.requests) == requests
