"""train.py (mit_semseg.cli.train) end to end on a tiny synthetic dataset (CPU): outputs, bad
input, kill-and-resume, and torchrun (2 processes, gloo) against one process with two CPU
replicas."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mit_semseg.config import load_config

# train.py needs the model zoo and the synthetic-data generator
pytest.importorskip("mit_semseg.models")
pytest.importorskip("mit_semseg.data.synthetic")

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = REPO_ROOT / "config" / "synthetic-mobilenetv2dilated-c1_deepsup.yaml"
sys.path.insert(0, str(REPO_ROOT))
import train  # noqa: E402  (the script under test)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from mit_semseg.data.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic")
    generate(root, num_train=8, num_val=2, seed=0, min_size=48, max_size=72)
    return root


def _opts(data: Path, out: Path, **train_keys) -> list:
    from mit_semseg.data.synthetic import SYNTHETIC_NUM_CLASS

    keys = {"num_epoch": 2, "epoch_iters": 3, "batch_size_per_gpu": 2, "workers": 0,
            "disp_iter": 1, "checkpoint_every": 1}
    keys.update(train_keys)
    opts = ["DIR", str(out), "DATASET.root_dataset", str(data),
            "DATASET.list_train", str(data / "training.odgt"),
            "DATASET.list_val", str(data / "validation.odgt"),
            "DATASET.num_class", str(SYNTHETIC_NUM_CLASS),
            "DATASET.imgSizes", "(48,)", "DATASET.imgMaxSize", "64"]
    for key, value in keys.items():
        opts += [f"TRAIN.{key}", str(value)]
    return opts


def _run(args: list, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, text=True,
                          capture_output=True, timeout=240, **kwargs)


def _weights(out: Path, epoch: int) -> dict:
    return {name: torch.load(out / f"{name}_epoch_{epoch}.pth", weights_only=True)
            for name in ("encoder", "decoder")}


def _assert_same_weights(a: dict, b: dict, atol: float) -> None:
    for name in a:
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            torch.testing.assert_close(a[name][key].double(), b[name][key].double(),
                                       rtol=0, atol=atol, msg=f"{name} {key}")


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
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, "train.py", *opts, *_opts(dataset, killed, **keys)],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
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

    result = _run(["train.py", *opts, "--resume", "auto", *_opts(dataset, killed, **keys)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resuming from {killed / 'checkpoint_last.pth'} at iteration {stopped_at}" in (
        killed / "log.txt").read_text()
    assert not list(killed.glob(".*.tmp"))
    _assert_same_weights(_weights(full, 2), _weights(killed, 2), atol=1e-6)
    history_full = torch.load(full / "history_epoch_2.pth", weights_only=True)["train"]
    history_resumed = torch.load(killed / "history_epoch_2.pth", weights_only=True)["train"]
    assert history_resumed["iteration"] == history_full["iteration"]
    assert history_resumed["loss"] == pytest.approx(history_full["loss"], abs=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_equal_one_process_with_two_replicas(dataset, tmp_path):
    """DDP + synced BN over 2 processes = one process with 2 CPU replicas + SyncBN.

    One step agrees to float precision (~1e-7). From random initialisation the network is
    numerically chaotic (running the *same* mode with 1 or 2 threads differs by ~1e-1 after
    two steps at lr 0.02), so a small learning rate keeps float noise from growing; wrong data
    splitting or gradient averaging would still move the weights by ~1e-3 and the BatchNorm
    statistics by far more than the tolerances.
    """
    keys = {"num_epoch": 1, "epoch_iters": 3, "checkpoint_every": 0, "lr_encoder": 1e-4,
            "lr_decoder": 1e-4}
    single = tmp_path / "single"
    result = _run(["train.py", "--cfg", str(CONFIG), "--gpus", "cpux2",
                   *_opts(dataset, single, **keys)])
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = tmp_path / "ddp"
    result = _run(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                   "127.0.0.1", "--master_port", str(_free_port()), "train.py", "--cfg",
                   str(CONFIG), "--gpus", "cpu", *_opts(dataset, ddp, **keys)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in (ddp / "log.txt").read_text()
    a, b = _weights(single, 1), _weights(ddp, 1)
    for name in a:
        assert a[name].keys() == b[name].keys()
        for key, value in a[name].items():
            if "running" in key:  # BN statistics: summed in a different order, relative check
                torch.testing.assert_close(value, b[name][key], rtol=1e-3, atol=1e-4)
            else:
                torch.testing.assert_close(value.double(), b[name][key].double(), rtol=0,
                                           atol=1e-4, msg=f"{name} {key}")


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
