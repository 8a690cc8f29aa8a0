"""train.py (mit_semseg.cli.train) end to end on a tiny synthetic dataset (CPU): outputs, bad
input, kill-and-resume. The launch modes (torchrun, several nodes, signals, elastic restarts)
are in test_train_launch.py."""
# ruff: noqa: F811  (the fixtures imported below are test arguments)

import json
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from eval_fixtures import run_piped
from train_fixtures import (  # noqa: F401  (dataset is a fixture)
    CONFIG,
    REPO_ROOT,
    assert_same_weights,
    dataset,
    free_port,
    load_weights,
    script_env,
    torchrun,
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
    # train.lock stays (unlocked); the owner note train.owner went with the run
    expected = {"config.yaml", "object_info.csv", "log.txt", "checkpoint_last.pth",
                "training_curves.png", "train.lock"}
    expected |= {f"{n}_epoch_{e}.pth" for n in ("encoder", "decoder", "history") for e in (1, 2)}
    assert names == expected
    # the run names its classes: the dataset's table (names and colours)
    assert (out / "object_info.csv").read_text() == (dataset / "object_info.csv").read_text()
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


@pytest.mark.slow
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
    # the killed run's owner note stays; its OS lock died with it and blocks nothing
    assert json.loads((killed / "train.owner").read_text())["pid"] == proc.pid

    result = _run(["train.py", *opts, "--resume", "auto", *_opts(dataset, killed, **keys)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (killed / "train.owner").exists()
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


def test_class_weights_weigh_the_loss():
    from mit_semseg.cli.train import build_module

    weights = (0.5, 1, 1, 1, 1, 1, 1, 4)
    cfg = load_config(CONFIG, ["TRAIN.pretrained", "False", "TRAIN.class_weights", str(weights)])
    module = build_module(cfg, num_devices=1, saved=None)
    assert module.crit.weight.tolist() == list(weights)
    assert build_module(load_config(CONFIG, ["TRAIN.pretrained", "False"]), num_devices=1,
                        saved=None).crit.weight is None


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


# ------------------------------------------------------------------ an earlier run in DIR
@pytest.fixture(scope="module")
def finished_run(dataset, tmp_path_factory):
    """A DIR where train.py ran to the end (1 epoch of 2 steps), and its overrides."""
    out = tmp_path_factory.mktemp("finished") / "run"
    opts = _opts(dataset, out, num_epoch=1, epoch_iters=2)
    result = _run(["train.py", "--cfg", str(CONFIG), "--gpus", "cpu", *opts])
    assert result.returncode == 0, result.stderr[-3000:]
    return out, opts


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` but the lock file (which stays, unlocked), by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "train.lock"}


def test_a_fresh_start_keeps_an_earlier_run(finished_run, tmp_path, in_process):
    earlier, opts = finished_run
    out = tmp_path / "run"
    shutil.copytree(earlier, out)
    opts = [str(out) if a == str(earlier) else a for a in opts]
    before = _files(out)
    result = _run(["train.py", "--cfg", str(CONFIG), "--gpus", "cpu", *opts])
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-3000:]
    assert result.stderr == (
        f"train.py: error: DIR {out} holds an earlier training run (checkpoint_last.pth, epoch "
        "files up to 1); continue it with --resume auto, give this run another DIR, or pass "
        f"--overwrite to move its files into {out / 'previous-<date>-<time>'}\n")
    assert _files(out) == before

    # --overwrite moves every file of the earlier run aside, untouched, and starts afresh
    code, text = in_process("train.py", "--cfg", str(CONFIG), "--gpus", "cpu", *opts,
                            "TRAIN.epoch_iters", "1", "--overwrite")
    assert code == 0, text
    (aside,) = out.glob("previous-*")
    assert {f"{aside.name}/{name}": data for name, data in before.items()} == {
        name: data for name, data in _files(out).items() if name.startswith(aside.name)}
    state = torch.load(out / "checkpoint_last.pth", weights_only=True)
    assert state["iteration"] == 1 and "encoder_epoch_1.pth" in {p.name for p in out.iterdir()}


def _copy_of_earlier_run(finished_run, tmp_path):
    """A copy of the finished run in ``tmp_path/run``, its options pointing there, and another
    training list (so a restart's config differs from the run it finds)."""
    earlier, opts = finished_run
    out = tmp_path / "run"
    shutil.copytree(earlier, out)
    other_list = tmp_path / "other.odgt"
    shutil.copy(opts[opts.index("DATASET.list_train") + 1], other_list)
    return out, [str(out) if a == str(earlier) else a for a in opts], other_list


def test_an_elastic_restart_does_not_adopt_an_earlier_run(finished_run, tmp_path, in_process,
                                                          monkeypatch):
    # The first start of a torchrun job was refused (its DIR holds another run) and torchrun
    # restarted it: the restart must not continue that run, even one with a compatible config.
    out, opts, other_list = _copy_of_earlier_run(finished_run, tmp_path)
    before = _files(out)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-b")
    code, out_text, err = in_process("train.py", "--cfg", str(CONFIG), "--gpus", "cpu", *opts,
                                     "DATASET.list_train", str(other_list), streams=True)
    assert code == 2, out_text + err
    assert err.startswith(f"train.py: error: DIR {out} holds an earlier training run") and (
        err.count("\n") == 1)
    assert f"{out / 'checkpoint_last.pth'} was written by another job" in out_text
    assert _files(out) == before


@pytest.mark.slow  # two torchrun incarnations; CI runs it (-m slow)
def test_torchrun_max_restarts_does_not_adopt_an_earlier_run(finished_run, tmp_path):
    # the case under a real torchrun: refused at its first start, restarted by
    # torchrun, the job must not continue the run it found in DIR
    out, opts, other_list = _copy_of_earlier_run(finished_run, tmp_path)
    before = _files(out)
    launcher = torchrun(1, "--rdzv-backend", "c10d", "--rdzv-endpoint",
                        f"127.0.0.1:{free_port()}", "--rdzv-id", "job-b", "--max-restarts", "1")
    result = _run([*launcher, "train.py", "--cfg", str(CONFIG), "--gpus", "cpu", *opts,
                   "DATASET.list_train", str(other_list)], timeout=400)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert output.count(f"train.py: error: DIR {out} holds an earlier training run") == 2
    assert output.count("was written by another job, not continuing from it") == 1
    assert "Training Done!" not in output and _files(out) == before


# ------------------------------------------------------------------ a write that fails
def _limit_file_size(limit: int):
    """For ``preexec_fn``: files larger than ``limit`` bytes cannot be written (EFBIG; Python
    ignores SIGXFSZ), as on a nearly full disk, but with the same outcome on every machine."""
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_failed_checkpoint_write_is_reported_on_its_own_line(dataset, tmp_path):
    out = tmp_path / "run"
    # the config and log fit, the first checkpoint (about 9 MiB) does not
    result = _run(["train.py", "--cfg", str(CONFIG), "--gpus", "cpu", *_opts(dataset, out)],
                  preexec_fn=_limit_file_size(2**20))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "epoch 1:" in result.stderr  # the progress bar was drawn on stderr
    errors = [line for line in result.stderr.split("\n") if "error" in line]
    assert errors == [f"train.py: error: cannot write to DIR {out}: File too large; training "
                      "stopped at iteration 1; make room or fix the folder, then continue with "
                      "--resume auto"]
    assert not list(out.glob("*.pth")) and not list(out.glob(".*.tmp"))


def test_a_bad_sample_with_loader_workers_leaves_no_process_behind(dataset, tmp_path):
    """A sample that fails in a loader worker stops the run, and every process it started is
    gone when train.py exits: its output pipe closes. (The workers ignore SIGTERM, so left to
    the interpreter's exit they were waited for forever, and train.py never exited.)"""
    record = json.loads((dataset / "training.odgt").read_text().splitlines()[0])
    (tmp_path / "broken.jpg").write_bytes(b"definitely not a jpeg")
    odgt = tmp_path / "train.odgt"
    odgt.write_text(json.dumps(dict(record, fpath_img=str(tmp_path / "broken.jpg"))) + "\n")
    # the start-up check would find the file: off, as for a file corrupted after the start
    code, output = run_piped(
        ["train.py", "--cfg", str(CONFIG), "--gpus", "cpu",
         *_opts(dataset, tmp_path / "run", workers=2, pretrained=False),
         "DATASET.list_train", str(odgt), "DATASET.preflight", "off"],
        timeout=120, env=script_env())
    assert code == 1, output
    assert f"broken.jpg: cannot decode (corrupt, truncated or not an image) (sample {odgt}:1)" \
        in output
