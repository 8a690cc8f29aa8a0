"""mit_semseg.cli.preflight, driven through the four scripts: every setup error is one line
``script.py: error: ...`` naming the file or key and the fix, with exit status 2, and it comes
before any slow work (model build, ImageNet download, worker processes)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from eval_fixtures import CFG, REPO_ROOT
from large_images import write_blank_png

from mit_semseg.cli import preflight
from mit_semseg.config import load_config
from mit_semseg.models import build_decoder

SCRIPTS = ("train.py", "eval.py", "eval_multipro.py", "test.py")
EVAL_SCRIPTS = SCRIPTS[1:]


def _argv(script: str, run, tmp_path: Path, **keys: str) -> list[str]:
    """A command line that would run ``script`` on the tiny run (train.py: into a new DIR)."""
    argv = ["--cfg", str(CFG), "--gpus", "cpu"]
    if script == "test.py":  # before the flags: --imgs takes every argument up to the next one
        argv = ["--imgs", str(next((run.data / "images").rglob("*.jpg")))] + argv
    if script == "train.py":
        keys = {"DIR": str(tmp_path / "train_out"), "TRAIN.num_epoch": "1",
                "TRAIN.epoch_iters": "1", "TRAIN.workers": "0", **keys}
    return argv + run.overrides(**{"TEST.result": str(tmp_path / "test_out"), **keys})


def _one_error_line(code: int, err: str, script: str) -> str:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"{script}: error: "), err
    assert "Traceback" not in err
    return err


@pytest.fixture
def no_model_build(monkeypatch):
    """Fails the test if a script loads weights into a real model (the slow part)."""
    from mit_semseg.models import builder

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the start-up checks failed")

    monkeypatch.setattr(builder, "load_weights", refuse)
    monkeypatch.setattr(builder, "load_pretrained", refuse)


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_architecture(script, tiny_run, tmp_path, in_process):
    code, _, err = in_process(script, *_argv(script, tiny_run, tmp_path,
                                             **{"MODEL.arch_encoder": "resnet51"}), streams=True)
    err = _one_error_line(code, err, script)
    assert "MODEL.arch_encoder 'resnet51' is not a known encoder; use one of: " in err
    assert "resnet50dilated" in err


@pytest.fixture(scope="module")
def bad_checkpoints(tiny_run, tmp_path_factory):
    """Folders holding the tiny run's encoder and a bad decoder_epoch_1.pth each."""
    root = tmp_path_factory.mktemp("bad_checkpoints")
    real = (tiny_run.ckpt / "decoder_epoch_1.pth").read_bytes()
    five_classes = build_decoder("c1_deepsup", fc_dim=320, num_class=5).state_dict()
    decoders = {
        "corrupt": lambda path: path.write_bytes(b"this is not a checkpoint"),
        "truncated": lambda path: path.write_bytes(real[: len(real) // 2]),
        "foreign": lambda path: shutil.copy(tiny_run.ckpt / "encoder_epoch_1.pth", path),
        "num_class": lambda path: torch.save(five_classes, path),
    }
    folders = {}
    for kind, write in decoders.items():
        folder = root / kind
        folder.mkdir()
        shutil.copy(tiny_run.ckpt / "encoder_epoch_1.pth", folder / "encoder_epoch_1.pth")
        write(folder / "decoder_epoch_1.pth")
        folders[kind] = folder
    return folders


EXPECTED = {
    "corrupt": "is not a readable PyTorch weights file",
    "truncated": "is not a readable PyTorch weights file",
    "foreign": "does not fit MODEL.arch_decoder 'c1_deepsup': ",
    "num_class": "was trained for 5 classes but DATASET.num_class is 8; set DATASET.num_class 5",
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_checkpoints(script, kind, bad_checkpoints, tiny_run, tmp_path, in_process,
                         no_model_build):
    decoder = bad_checkpoints[kind] / "decoder_epoch_1.pth"
    keys = ({"MODEL.weights_decoder": str(decoder)} if script == "train.py"
            else {"DIR": str(bad_checkpoints[kind])})
    code, _, err = in_process(script, *_argv(script, tiny_run, tmp_path, **keys), streams=True)
    err = _one_error_line(code, err, script)
    assert str(decoder) in err and EXPECTED[kind] in err
    if script != "train.py":  # evaluation wording
        assert "train.py" not in err and "to train" not in err


def test_missing_training_data_fails_before_the_imagenet_download(tiny_run, tmp_path,
                                                                  in_process, no_model_build,
                                                                  monkeypatch):
    monkeypatch.setenv("MIT_SEMSEG_PRETRAINED_DIR", str(tmp_path / "pretrained"))
    missing = tmp_path / "nowhere" / "training.odgt"
    code, _, err = in_process("train.py", *_argv("train.py", tiny_run, tmp_path, **{
        "DATASET.list_train": str(missing), "TRAIN.pretrained": "True"}), streams=True)
    err = _one_error_line(code, err, "train.py")
    assert f"DATASET.list_train {missing}: no such file; point DATASET.list_train" in err
    assert not (tmp_path / "pretrained").exists() and not (tmp_path / "train_out").exists()


def test_bad_training_samples_are_reported_in_one_message(tiny_run, tmp_path, in_process,
                                                          no_model_build):
    lines = (tiny_run.data / "validation.odgt").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    bad = [dict(records[0], fpath_img="images/none.jpg"), dict(records[1], width=1),
           dict(records[2], fpath_segm="annotations/none.png")]
    odgt = tmp_path / "train.odgt"
    odgt.write_text("\n".join(lines + [json.dumps(r) for r in bad]) + "\n")
    code, _, err = in_process("train.py", *_argv("train.py", tiny_run, tmp_path, **{
        "DATASET.list_train": str(odgt)}), streams=True)
    err = _one_error_line(code, err, "train.py")
    assert f"DATASET.list_train {odgt}: 3 of 6 line(s) bad: {odgt}:4: " in err
    assert f"; {odgt}:5: list says 1x" in err and f"; {odgt}:6: " in err
    assert "python -m mit_semseg.data.check" in err and "--headers-only" in err


def test_eval_multipro_missing_checkpoint_starts_no_worker(tiny_run, tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    argv = _argv("eval_multipro.py", tiny_run, tmp_path, **{"VAL.checkpoint": "epoch_7.pth"})
    proc = subprocess.run([sys.executable, "eval_multipro.py", "--workers", "2", *argv],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    err = _one_error_line(proc.returncode, proc.stderr, "eval_multipro.py")
    assert "checkpoint file(s) not found: " in err and "decoder_epoch_7.pth" in err
    assert "set DIR to the folder that holds the encoder_/decoder_ files and VAL.checkpoint" in err
    assert "process 0 on" not in proc.stdout  # no worker was started


def test_pyramid_pooling_with_one_image_per_device(tiny_run, tmp_path, in_process,
                                                   no_model_build):
    keys = {"MODEL.arch_decoder": "ppm_deepsup", "TRAIN.batch_size_per_gpu": "1"}
    for gpus, sync_bn in (("cpu", "True"), ("cpux2", "False")):
        argv = _argv("train.py", tiny_run, tmp_path, **keys, **{"DIST.sync_bn": sync_bn})
        code, _, err = in_process("train.py", "--gpus", gpus, *argv, streams=True)
        err = _one_error_line(code, err, "train.py")
        assert "TRAIN.batch_size_per_gpu 1 cannot train MODEL.arch_decoder 'ppm_deepsup'" in err
        for alternative in ("TRAIN.batch_size_per_gpu 2", "DIST.sync_bn True", "TRAIN.fix_bn",
                            "c1"):
            assert alternative in err


def test_the_pooled_batch_norm_check_matches_what_trains():
    """The check refuses exactly the set-ups in which the first training step would fail."""
    torch.manual_seed(0)
    decoder = build_decoder("ppm", fc_dim=16, num_class=3).train()
    features = [torch.randn(2, 16, 6, 6)]
    decoder([f[:2] for f in features])  # two images: trains
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        decoder([f[:1] for f in features])  # what the check prevents

    def refused(decoder_name, batch, devices=1, world=1, **keys):
        opts = {"MODEL.arch_decoder": decoder_name, "MODEL.arch_encoder": "mobilenetv2dilated",
                "MODEL.fc_dim": "320", "TRAIN.batch_size_per_gpu": str(batch), **keys}
        cfg = load_config(None, [t for pair in opts.items() for t in pair])
        try:
            preflight.check_trainable_batch_norm(cfg, preflight.model_skeleton(cfg), devices,
                                                 world)
        except preflight.SetupError:
            return True
        return False

    assert refused("ppm_deepsup", 1) and refused("ppm", 1)
    assert refused("ppm", 1, devices=2, **{"DIST.sync_bn": "False"})
    assert not refused("ppm", 2)
    assert not refused("ppm", 1, devices=2)  # SyncBN over two CPU replicas / GPUs
    assert not refused("ppm", 1, world=2)  # SyncBN over two torchrun processes
    assert not refused("ppm", 1, **{"TRAIN.fix_bn": "True"})
    for decoder_name in ("c1", "c1_deepsup", "upernet"):  # upernet normalises after upsampling
        assert not refused(decoder_name, 1)


def test_checkpoint_errors_name_the_right_architecture_key(tiny_run):
    cfg = load_config(CFG)
    skeleton = preflight.model_skeleton(cfg)
    encoder = torch.load(tiny_run.ckpt / "encoder_epoch_1.pth", weights_only=True)
    with pytest.raises(preflight.SetupError,
                       match=r"x does not fit MODEL.arch_encoder 'mobilenetv2dilated': 1 "
                             r"unexpected key\(s\) \(extra.weight\); set MODEL.arch_encoder"):
        preflight.check_state_dict(skeleton.encoder, {**encoder, "extra.weight": torch.ones(1)},
                                   "x", ("MODEL.arch_encoder", "mobilenetv2dilated"), 8)
    preflight.check_state_dict(skeleton.encoder, {f"module.{k}": v for k, v in encoder.items()},
                               "x", ("MODEL.arch_encoder", "mobilenetv2dilated"), 8)
    with pytest.raises(preflight.SetupError, match="set MODEL.fc_dim to 320"):
        preflight.model_skeleton(load_config(CFG, ["MODEL.fc_dim", "2048"]))


# --------------------------------------------------------------------------- output folders
def _user_namespaces() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    return probe.returncode == 0


# Runs scripts in-process, one Python for all cases, in a private mount namespace whose mounts
# (a small tmpfs, a read-only bind mount) vanish with it. Prints one JSON line per case.
_DRIVER = textwrap.dedent("""
    import contextlib, io, json, os, subprocess, sys
    import importlib.util
    import torch
    spec = json.loads(sys.argv[1])
    for command in spec["mounts"]:
        subprocess.run(command, check=True)
    for script, argv, out_dir in spec["cases"]:
        loader = importlib.util.spec_from_file_location("s", os.path.join(spec["repo"], script))
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = module.main(argv)
        files = {}
        for name in sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []:
            if name.endswith(".pth"):
                state = torch.load(os.path.join(out_dir, name), weights_only=True)
                files[name] = state.get("iteration", -1) if "format" in state else -1
        print(json.dumps({"code": code, "err": err.getvalue(), "files": files}), flush=True)
""")


@pytest.mark.skipif(not _user_namespaces(),
                    reason="needs `unshare -rm` (user namespaces) to mount a read-only folder "
                           "and a small tmpfs without root")
def test_read_only_and_full_output_folders(tiny_run, tmp_path):
    read_only, small, full = tmp_path / "ro", tmp_path / "small", tmp_path / "full"
    for folder in (read_only, small, full):
        folder.mkdir()
    mounts = [["mount", "--bind", str(read_only), str(read_only)],
              ["mount", "-o", "remount,ro,bind", str(read_only)],
              # preflight.check_training needs 16 MiB + 5 x 8.4 MiB (weights) for this model
              ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)],
              ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(full)]]
    long_run = {"TRAIN.num_epoch": "8", "TRAIN.batch_size_per_gpu": "1",
                "DATASET.list_train": str(tiny_run.data / "validation.odgt")}
    cases = [
        ("train.py", _argv("train.py", tiny_run, tmp_path, DIR=str(read_only / "run")),
         str(read_only / "run")),
        ("test.py", _argv("test.py", tiny_run, tmp_path, **{"TEST.result": str(read_only)}),
         str(read_only)),
        ("train.py", _argv("train.py", tiny_run, tmp_path, DIR=str(small)), str(small)),
        ("train.py", _argv("train.py", tiny_run, tmp_path, DIR=str(full), **long_run),
         str(full)),
    ]
    spec = {"repo": str(REPO_ROOT), "mounts": mounts, "cases": cases}
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    proc = subprocess.run(["unshare", "-rm", sys.executable, "-c", _DRIVER, json.dumps(spec)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ro_train, ro_test, too_small, fills_up = map(json.loads, proc.stdout.splitlines())

    err = _one_error_line(ro_train["code"], ro_train["err"], "train.py")
    assert (f"DIR {read_only / 'run'}: cannot write there (Read-only file system); make it "
            "writable or set DIR to another folder") in err
    err = _one_error_line(ro_test["code"], ro_test["err"], "test.py")
    assert f"TEST.result {read_only}: cannot write there (Read-only file system)" in err
    err = _one_error_line(too_small["code"], too_small["err"], "train.py")
    assert f"DIR {small}: " in err and " free, this run needs at least 58 MiB" in err
    assert not too_small["files"]
    # the disk fills up part-way: status 1, one line, and a resumable last checkpoint
    assert fills_up["code"] == 1, fills_up["err"]
    # the progress bar ends with its line; the error is a line of its own
    errors = [line for line in fills_up["err"].split("\n") if "error" in line]
    assert len(errors) == 1 and errors[0].startswith(f"train.py: error: cannot write to DIR {full}")
    assert "No space left on device; training stopped at iteration " in fills_up["err"]
    assert "continue with --resume auto" in fills_up["err"]
    assert fills_up["files"]["checkpoint_last.pth"] >= 1
    assert "encoder_epoch_8.pth" not in fills_up["files"]


def test_a_resume_counts_the_space_of_the_checkpoint_it_replaces(tiny_run, tmp_path,
                                                                  monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint_last.pth").write_bytes(b"\0" * 2**20)  # only its size is read here
    resume = load_config(CFG, tiny_run.overrides(DIR=str(out), **{"TRAIN.resume": "auto"}))
    weights = preflight.checkpoint_bytes(preflight.model_skeleton(resume))
    needed = preflight.MIN_FREE_BYTES + 5 * weights
    usage = shutil.disk_usage(out)
    monkeypatch.setattr(preflight.shutil, "disk_usage",
                        lambda path: usage._replace(free=needed - 2**19))
    preflight.check_training(resume, 1, 1)  # 0.5 MiB short, but 1 MiB is replaced
    fresh = load_config(CFG, tiny_run.overrides(DIR=str(out)))
    with pytest.raises(preflight.SetupError, match=r"MiB free, this run needs at least"):
        preflight.check_training(fresh, 1, 1)
    monkeypatch.setattr(preflight.shutil, "disk_usage",
                        lambda path: usage._replace(free=needed - 3 * 2**20))
    with pytest.raises(preflight.SetupError, match=r"MiB free \(with 1 MiB of files it "
                                                   r"replaces\), this run needs at least"):
        preflight.check_training(resume, 1, 1)


# --------------------------------------------------------------------------- --help
@pytest.mark.parametrize("script", SCRIPTS)
def test_help_shows_defaults_examples_config_docs_and_exit_statuses(script, capsys):
    from eval_fixtures import load_script

    from mit_semseg.config import defaults, packaged_configs

    with pytest.raises(SystemExit) as info:
        load_script(script).main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    flat = " ".join(text.split())  # argparse wraps the flags' help
    assert "(default: ade20k-resnet50dilated-ppm_deepsup)" in flat
    assert "(default: the config's DEVICE" in flat
    assert text.count(f"  python {script} --") >= 3  # examples
    assert str(Path(defaults.__file__).resolve()) in text  # where every key is documented
    assert all(name in text for name in packaged_configs())
    for status in ("0  everything ran", "1  it ran, but some inputs failed",
                   f'2  nothing ran: a bad command line, config key, data list or file, '
                   f'reported as one line\n     "{script}: error: ..."'):
        assert status in text
    if script != "train.py":
        assert "train" not in text.split("examples:")[0].replace("trained", "")


@pytest.mark.parametrize("script,list_key,preflight", [
    ("train.py", "list_train", "headers"), ("train.py", "list_train", "full"),
    ("eval.py", "list_val", "headers"), ("eval_multipro.py", "list_val", "headers")])
def test_a_decompression_bomb_in_the_list_is_named_with_its_size(script, list_key, preflight,
                                                                 tiny_run, tmp_path, in_process,
                                                                 no_model_build):
    # a 50 KB PNG of 20000x20000 pixels (1.2 GB decoded) as the second record's image
    lines = (tiny_run.data / "validation.odgt").read_text().splitlines()
    bomb = write_blank_png(tmp_path / "bomb.png")
    lines[1] = json.dumps(dict(json.loads(lines[1]), fpath_img=str(bomb)))
    odgt = tmp_path / "list.odgt"
    odgt.write_text("\n".join(lines) + "\n")
    code, _, err = in_process(script, *_argv(script, tiny_run, tmp_path, **{
        f"DATASET.{list_key}": str(odgt), "DATASET.preflight": preflight}), streams=True)
    err = _one_error_line(code, err, script)
    assert (f"1 of 3 line(s) bad: {odgt}:2: {bomb}: 20000x20000 = 400,000,000 pixels, more "
            "than the limit of 89,478,485 (DATASET.max_image_pixels); not decoded") in err
    # a raised limit is in the command that lists every problem
    code, _, err = in_process(script, *_argv(script, tiny_run, tmp_path, **{
        f"DATASET.{list_key}": str(odgt), "DATASET.max_image_pixels": "1000000"}),
        streams=True)
    err = _one_error_line(code, err, script)
    assert "more than the limit of 1,000,000" in err and "--max-image-pixels 1000000" in err
