"""train.py's random generators and devices: a resumed run restores every generator a dropout
decoder draws from (CPU, and CUDA when present), the GPUs are bound and seeded one by one, and
an out-of-range label file is reported by name before it reaches the loss."""

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from eval_fixtures import CFG, bound_devices, in_process  # noqa: F401

from mit_semseg.cli import train as train_cli
from mit_semseg.engine import run_control, trainer

EPOCH_ITERS, STOP_AT = 4, 3  # killed mid-epoch 1; the resumed run crosses into epoch 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from mit_semseg.data.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic")
    generate(root, num_train=8, num_val=2, seed=0, min_size=48, max_size=72)
    return root


@pytest.fixture(autouse=True)
def _process_settings(monkeypatch):
    """train.main runs in this process: one torch thread (steady timings on a busy machine),
    and torch's global switches (TRAIN.deterministic sets some) put back afterwards."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cudnn = torch.backends.cudnn
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32,
             torch.backends.cuda.matmul.allow_tf32)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved[0])
    torch.use_deterministic_algorithms(saved[1])
    cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32 = saved[2:5]
    torch.backends.cuda.matmul.allow_tf32 = saved[5]


def _args(data: Path, out: Path, device: str, amp: str = "", **keys) -> list:
    from mit_semseg.data.synthetic import SYNTHETIC_NUM_CLASS

    train_keys = {"num_epoch": 2, "epoch_iters": EPOCH_ITERS, "batch_size_per_gpu": 2,
                  "workers": 0, "disp_iter": 1, "checkpoint_every": 1, "amp": amp,
                  # CPU training is deterministic anyway; on a GPU it takes this mode
                  "deterministic": device != "cpu", **keys}
    opts = ["DIR", str(out), "DATASET.root_dataset", str(data),
            "DATASET.list_train", str(data / "training.odgt"),
            "DATASET.list_val", str(data / "validation.odgt"),
            "DATASET.num_class", str(SYNTHETIC_NUM_CLASS),
            "DATASET.imgSizes", "(32,)", "DATASET.imgMaxSize", "48",
            # a decoder with dropout in both heads: every step draws from the generators
            "MODEL.arch_decoder", "ppm_deepsup"]
    for key, value in train_keys.items():
        opts += [f"TRAIN.{key}", str(value)]
    return ["--cfg", str(CFG), "--gpus", device, *opts]


class _Killed(BaseException):
    """Ends a run right after a checkpoint was written, as a SIGKILL there would."""


def _train_killed_at(run, args: list, monkeypatch, iteration: int) -> None:
    save_and_continue = run_control.RunControl.__call__

    def after_step(self, state):
        save_and_continue(self, state)
        if state.iteration == iteration:
            raise _Killed

    with monkeypatch.context() as patch:
        patch.setattr(run_control.RunControl, "__call__", after_step)
        with pytest.raises(_Killed):
            run("train.py", *args)


def _final_weights(out: Path) -> dict:
    return {f"{part}.{key}": value.double() for part in ("encoder", "decoder") for key, value in
            torch.load(out / f"{part}_epoch_2.pth", weights_only=True).items()}


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("device, amp", [
    ("cpu", ""),
    pytest.param("0", "", marks=pytest.mark.cuda),
    pytest.param("0", "fp16", marks=pytest.mark.cuda),
    pytest.param("0", "bf16", marks=pytest.mark.cuda),
])
def test_resume_restores_the_generators_dropout_draws_from(dataset, tmp_path, in_process,  # noqa: F811
                                                            monkeypatch, device, amp):
    """Killed after step 3 and resumed == uninterrupted (1e-6); the same resume with the RNG
    restore skipped differs, so the comparison really depends on the restored generators."""
    full = tmp_path / "full"
    code, out = in_process("train.py", *_args(dataset, full, device, amp))
    assert code == 0, out
    killed = tmp_path / "killed"
    _train_killed_at(in_process, _args(dataset, killed, device, amp), monkeypatch, STOP_AT)
    saved = torch.load(killed / "checkpoint_last.pth", weights_only=True)
    assert saved["iteration"] == STOP_AT
    assert (saved["scaler"] is not None) == (amp == "fp16")  # fp16's scaler state is saved
    assert len(saved["rng"][0]["cuda"]) == (device != "cpu")
    unrestored = tmp_path / "unrestored"
    shutil.copytree(killed, unrestored)

    torch.manual_seed(12345)  # a resumed run must not depend on this process' generators
    code, out = in_process("train.py", "--resume", "auto", *_args(dataset, killed, device, amp))
    assert code == 0, out
    assert f"Resuming from {killed / 'checkpoint_last.pth'} at iteration {STOP_AT}" in out
    resumed = _final_weights(killed)
    difference = _max_difference(resumed, _final_weights(full))
    assert difference <= 1e-6, f"resumed run differs from the uninterrupted one by {difference}"
    history = torch.load(killed / "history_epoch_2.pth", weights_only=True)["train"]
    assert all(np.isfinite(history["loss"]))

    monkeypatch.setattr(trainer, "restore_rng_state", lambda *args: None)  # the planted bug
    code, out = in_process("train.py", "--resume", "auto",
                           *_args(dataset, unrestored, device, amp))
    assert code == 0, out
    difference = _max_difference(_final_weights(unrestored), resumed)
    assert difference > 1e-5, "control: without the restored generators the run must differ"


def test_train_binds_the_first_gpu_and_seeds_each_gpu(dataset, tmp_path, in_process,  # noqa: F811
                                                      bound_devices, monkeypatch):  # noqa: F811
    """Issue 17.4 and 17.1 for a one-process two-GPU run (`--gpus 2,3`), faked on the CPU: the
    first GPU is the current device before the model moves, and each GPU gets its own seed."""
    gpus = [torch.device("cuda", 2), torch.device("cuda", 3)]
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(train_cli, "resolve_devices", lambda spec: gpus)
    seeded, bound_before_the_model_moved = [], []
    monkeypatch.setattr(train_cli, "seed_cuda_generators",
                        lambda seed, devices, indices: seeded.append((seed, devices, indices)))

    def parallelize(module, devices, dist_ctx, sync_bn):
        bound_before_the_model_moved.extend(bound_devices)
        return module, False

    monkeypatch.setattr(train_cli, "parallelize", parallelize)
    monkeypatch.setattr(train_cli, "train", lambda cfg, state, num_devices: 0)
    code, out = in_process("train.py", *_args(dataset, tmp_path / "run", "2,3"))
    assert code == 0, out
    assert bound_before_the_model_moved == ["cuda:2"]
    assert seeded == [(304, gpus, [0, 1])]


def test_out_of_range_label_file_is_named(dataset, tmp_path, in_process):  # noqa: F811
    """Issue 17.7: a label PNG with a value above num_class is reported with its path and
    value when it is read, on the host, before anything reaches a (CUDA) loss kernel."""
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    label_files = sorted((data / "annotations" / "training").glob("*.png"))
    for path in label_files:  # whichever sample comes first is bad
        label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        label[0, 0] = 200
        cv2.imwrite(str(path), label)
    with pytest.raises(ValueError, match=r"annotations/training/train_\d+\.png: label value 200 "
                                         r"> num_class"):
        in_process("train.py", *_args(data, tmp_path / "run", "cpu"))
