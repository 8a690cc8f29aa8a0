"""train.py (mit_semseg.cli.train) end to end on a tiny synthetic dataset (CPU): outputs, bad
input, kill-and-resume. The launch modes (torchrun, several nodes, signals, elastic restarts)
are in test_train_launch.py."""
# ruff: noqa: F811  (the fixtures imported below are test arguments)

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_fixtures import (  # noqa: F401  (dataset is a fixture)
    CONFIG,
    REPO_ROOT,
    assert_same_weights,
    dataset,
    load_weights,
    script_env,
)
from train_fixtures import run as _run
from train_fixtures import train_opts as _opts

from mit_semseg.config import load_config

sys.path.insert(0, str(REPO_ROOT))
import train  # noqa: E402  (the script under test)

_weights = load_weights


def test_train_writes_all_outputs(dataset, tmp_path):
    out = tmp_path / "run"
    result = _run(["train.py", "--cfg", str(CONFIG), "--gpus", "cpu", *_opts(dataset, out)])
    assert result.returncode == 0, result.stderr[-3000:]
    names = {p.name for p in out.iterdir()}
    expected = {"config.yaml", "log.txt", "checkpoint_last.pth", "training_curves.png"}
    expected |= {f"{n}_epoch_{e}.pth" for n in ("encoder", "decoder", "history") for e in (1, 2)}
    assert names == expected
    saved_cfg = load_config(out / "config.yaml")
    assert saved_cfg.DIR == str(out) and saved_cfg.TRAIN.epoch_iters == 3
    # the weights load strictly into freshly built nets of the configured architecture
    from mit_semseg.models import ModelBuilder

    encoder = ModelBuilder.build_encoder(arch=saved_cfg.MODEL.arch_encoder,
                                         fc_dim=saved_cfg.MODEL.fc_dim)
    decoder = ModelBuilder.build_decoder(arch=saved_cfg.MODEL.arch_decoder,
                                         fc_dim=saved_cfg.MODEL.fc_dim,
                                         num_class=saved_cfg.DATASET.num_class)
    weights = _weights(out, 2)
    encoder.load_state_dict(weights["encoder"], strict=True)
    decoder.load_state_dict(weights["decoder"], strict=True)
    assert not any(k.startswith("module.") for k in weights["encoder"])
    history = torch.load(out / "history_epoch_2.pth", weights_only=True)["train"]
    assert history["iteration"] == list(range(6))  # disp_iter 1: one point per iteration
    assert len(history["loss"]) == len(history["acc"]) == len(history["lr_encoder"]) == 6
    state = torch.load(out / "checkpoint_last.pth", weights_only=True)
    assert (state["epoch"], state["iteration"]) == (2, 6)
    log = (out / "log.txt").read_text()
    assert "Epoch: [2][2/3]" in log and "Training Done!" in log
    assert "World size 1 on 1 node(s): node 0 (" in log
    assert "1 Epoch = 3 iters; effective batch 2 = 1 device(s) x 2 images per device" in log


def test_train_bf16_autocast_on_cpu(dataset, tmp_path):
    out = tmp_path / "bf16"
    keys = {"num_epoch": 1, "epoch_iters": 2, "amp": "bf16"}
    result = _run(["train.py", "--cfg", str(CONFIG), "--gpus", "cpu",
                   *_opts(dataset, out, **keys)])
    assert result.returncode == 0, result.stderr[-3000:]
    weights = _weights(out, 1)
    for sd in weights.values():
        for key, value in sd.items():
            if value.is_floating_point():
                assert value.dtype == torch.float32 and torch.isfinite(value).all(), key


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--cfg", "config/no-such-file.yaml"], "config file not found: config/no-such-file.yaml"),
        (["TRAIN.num_epochs", "3"], "unknown config key 'TRAIN.num_epochs'"),
        (["DATASET.imgSizes", "300"], "DATASET.imgSizes expects tuple"),
        (["--gpus", "banana"], 'Can not recognize device: "banana"'),
        (["--gpus", "0-1"], "GPU(s)"),
        (["--resume", "/nonexistent/checkpoint_last.pth"], "resume checkpoint not found"),
        (["TRAIN.start_epoch", "1"], "TRAIN.start_epoch 1: checkpoint"),
        (["TRAIN.amp", "fp16", "--gpus", "cpu"], "TRAIN.amp 'fp16' needs a CUDA device"),
        (["MODEL.fc_dim", "2048"], "set MODEL.fc_dim to 320"),
        (["--gpus", "cpu", "--nope"], "unrecognized arguments: --nope"),
    ],
)
def test_bad_input_exits_with_a_clear_message(argv, message, tmp_path, dataset, monkeypatch,
                                              capsys):
    if argv[:2] == ["--gpus", "0-1"] and torch.cuda.device_count() >= 2:
        pytest.skip("this machine has the GPUs")
    flags = [a for a in argv if a.startswith("--")]
    cfg_args = [] if "--cfg" in flags else ["--cfg", str(CONFIG)]
    opts = _opts(dataset, tmp_path / "out")
    flag_part = [a for i, a in enumerate(argv) if a.startswith("--") or
                 (i > 0 and argv[i - 1].startswith("--"))]
    key_part = [a for a in argv if a not in flag_part]
    monkeypatch.chdir(REPO_ROOT)
    assert train.main(cfg_args + flag_part + opts + key_part) == 2
    text = capsys.readouterr().err
    assert text.startswith("train.py: error:") and message in text
    assert text.count("\n") == 1  # one line


def test_bad_input_exit_status_from_the_command_line():
    result = _run(["train.py", "--cfg", "config/no-such-file.yaml"])
    assert result.returncode == 2
    assert "train.py: error: config file not found" in result.stderr
    assert "Traceback" not in result.stderr


def _checkpoint_files_load(out: Path) -> None:
    for path in out.glob("*.pth"):
        torch.load(path, weights_only=True)  # raises on a truncated file


def test_kill_and_resume_equals_uninterrupted_run(dataset, tmp_path):
    opts = ["--cfg", str(CONFIG), "--gpus", "cpu"]
    keys = {"epoch_iters": 4, "workers": 1, "disp_iter": 2}
    full = tmp_path / "full"
    result = _run(["train.py", *opts, *_opts(dataset, full, **keys)])
    assert result.returncode == 0, result.stderr[-3000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "train.py", *opts, *_opts(dataset, killed, **keys)],
                            cwd=REPO_ROOT, env=script_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoint_last.pth").exists() and proc.poll() is None:
        assert time.time() < deadline, "no checkpoint was written"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "encoder_epoch_2.pth").exists()
    _checkpoint_files_load(killed)
    stopped_at = torch.load(killed / "checkpoint_last.pth", weights_only=True)["iteration"]
    assert stopped_at < 8
    assert (killed / "train.lock").exists()  # left by the killed run

    result = _run(["train.py", *opts, "--resume", "auto", *_opts(dataset, killed, **keys)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Took over the stale lock {killed / 'train.lock'}" in result.stdout
    assert f"process {proc.pid} no longer exists" in result.stdout
    assert f"Resuming from {killed / 'checkpoint_last.pth'} at iteration {stopped_at}" in (
        killed / "log.txt").read_text()
    assert not list(killed.glob(".*.tmp"))
    assert_same_weights(_weights(full, 2), _weights(killed, 2))
    history_full = torch.load(full / "history_epoch_2.pth", weights_only=True)["train"]
    history_resumed = torch.load(killed / "history_epoch_2.pth", weights_only=True)["train"]
    assert history_resumed["iteration"] == history_full["iteration"]
    assert history_resumed["loss"] == pytest.approx(history_full["loss"], abs=1e-6)


def _upernet_config(arch_encoder: str, fc_dim: int):
    return load_config(None, ["MODEL.arch_encoder", arch_encoder, "MODEL.arch_decoder", "upernet",
                              "MODEL.fc_dim", str(fc_dim), "DATASET.num_class", "5",
                              "TRAIN.pretrained", "False"])


@pytest.mark.parametrize("arch_encoder, fc_dim", [("resnet18dilated", 512),
                                                  ("mobilenetv2dilated", 320)])
def test_model_takes_decoder_widths_from_the_encoder(arch_encoder, fc_dim):
    # The original sized UPerNet for ResNet-50 whatever the encoder; ours reads the widths.
    from mit_semseg.cli.train import build_module

    module = build_module(_upernet_config(arch_encoder, fc_dim), num_devices=1, saved=None)
    assert not module.decoder.deep_sup  # upernet has no auxiliary head
    batch = {"img_data": torch.randn(1, 3, 64, 64),
             "seg_label": torch.randint(-1, 5, (1, 16, 16))}
    loss, acc = module(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    with pytest.raises(ValueError, match="fc_dim"):
        build_module(_upernet_config(arch_encoder, 2048), num_devices=1, saved=None)


def test_deep_supervision_comes_from_the_decoder():
    from mit_semseg.cli.train import build_module

    cfg = load_config(CONFIG, ["TRAIN.pretrained", "False", "TRAIN.deep_sup_scale", "0.3"])
    assert cfg.MODEL.arch_decoder == "c1_deepsup"
    assert build_module(cfg, num_devices=1, saved=None).deep_sup_scale == 0.3


@pytest.mark.parametrize("value", ["True", "False"])
def test_factored_heads_key_reaches_the_decoder(value):
    from mit_semseg.cli.train import build_module

    cfg = load_config(CONFIG, ["TRAIN.pretrained", "False", "MODEL.arch_decoder", "ppm_deepsup",
                               "TRAIN.factored_heads", value])
    module = build_module(cfg, num_devices=1, saved=None)
    assert module.decoder.factored_training is (value == "True")


def test_skip_bad_samples_keeps_the_run_going(dataset, tmp_path, monkeypatch):
    # half of the list points at missing images; the start-up check is off, as for a list
    # that was fine at start and lost files on the way
    lines = (dataset / "training.odgt").read_text().splitlines()
    missing = [json.dumps(dict(json.loads(line), fpath_img=f"images/gone_{i}.jpg"))
               for i, line in enumerate(lines)]
    odgt = tmp_path / "train.odgt"
    odgt.write_text("\n".join(lines + missing) + "\n")
    out = tmp_path / "run"
    argv = ["--cfg", str(CONFIG), "--gpus", "cpu",
            *_opts(dataset, out, num_epoch=1, epoch_iters=3, skip_bad_samples=True),
            "DATASET.list_train", str(odgt), "DATASET.preflight", "off"]
    monkeypatch.chdir(REPO_ROOT)
    assert train.main(argv) == 0
    log = (out / "log.txt").read_text()
    assert "skipping a bad training sample (TRAIN.skip_bad_samples)" in log
    assert "gone_" in log and "Training Done!" in log
