"""A tiny synthetic dataset and helpers to run train.py on it (CPU) for the train tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

# train.py needs the model zoo and the synthetic-data generator
pytest.importorskip("mit_semseg.models")
pytest.importorskip("mit_semseg.data.synthetic")

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = REPO_ROOT / "config" / "synthetic-mobilenetv2dilated-c1_deepsup.yaml"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from mit_semseg.data.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic")
    generate(root, num_train=8, num_val=2, seed=0, min_size=48, max_size=72)
    return root


def train_opts(data: Path, out: Path, sizes: str = "(48,)", **keys) -> list[str]:
    """``KEY VALUE`` overrides for a tiny run; ``keys`` are TRAIN keys, or full names with a
    dot (``**{"MODEL.weights_encoder": path}``)."""
    from mit_semseg.data.synthetic import SYNTHETIC_NUM_CLASS

    train_keys = {"num_epoch": 2, "epoch_iters": 3, "batch_size_per_gpu": 2, "workers": 0,
                  "disp_iter": 1, "checkpoint_every": 1}
    train_keys.update(keys)
    opts = ["DIR", str(out), "DATASET.root_dataset", str(data),
            "DATASET.list_train", str(data / "training.odgt"),
            "DATASET.list_val", str(data / "validation.odgt"),
            "DATASET.num_class", str(SYNTHETIC_NUM_CLASS),
            "DATASET.imgSizes", sizes, "DATASET.imgMaxSize", "64"]
    for key, value in train_keys.items():
        opts += [key if "." in key else f"TRAIN.{key}", str(value)]
    return opts


def script_env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT),
                CUDA_VISIBLE_DEVICES="")


def run(args: list, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """``python ARGS`` in the repository root, as a user would run it."""
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=script_env(), text=True,
                          capture_output=True, timeout=timeout, **kwargs)


def start(args: list, log: Path, **kwargs) -> subprocess.Popen:
    """``python ARGS`` in the background, output to ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, env=script_env(),
                                stdout=out, stderr=subprocess.STDOUT, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, *extra: str) -> list[str]:
    """The start of a ``python -m torch.distributed.run`` command line on 127.0.0.1."""
    return ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), *extra]


def single_node(nproc: int = 2) -> list[str]:
    return torchrun(nproc, "--master_addr", "127.0.0.1", "--master_port", str(free_port()))


def load_weights(out: Path, epoch: int) -> dict[str, dict[str, torch.Tensor]]:
    """Both nets' state dicts (weights and BatchNorm buffers) of epoch ``epoch``."""
    return {name: torch.load(out / f"{name}_epoch_{epoch}.pth", weights_only=True)
            for name in ("encoder", "decoder")}


def max_difference(a: dict, b: dict) -> float:
    """Largest absolute difference over every tensor of both nets (keys must match)."""
    worst = 0.0
    for name in a:
        assert a[name].keys() == b[name].keys()
        for key, value in a[name].items():
            if value.numel():
                diff = (value.double() - b[name][key].double()).abs().max().item()
                worst = max(worst, diff)
    return worst


def assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    """Every weight and buffer equal (bit for bit with ``atol=0``)."""
    for name in a:
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            torch.testing.assert_close(a[name][key].double(), b[name][key].double(),
                                       rtol=0, atol=atol, msg=f"{name} {key}")


def log_lines(out: Path, text: str) -> int:
    """How many lines of ``out/log.txt`` contain ``text`` (0 before the file exists)."""
    try:
        return sum(text in line for line in (out / "log.txt").read_text().splitlines())
    except FileNotFoundError:
        return 0


def wait_for(condition, proc: subprocess.Popen, timeout: float, what: str) -> None:
    """Poll ``condition()`` every 20 ms while ``proc`` runs."""
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended (status {proc.returncode}) before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def worker_pids(agent_pid: int) -> dict[int, int]:
    """``{rank: pid}`` of the workers a torchrun agent started (read from /proc)."""
    pids = {}
    for task in Path(f"/proc/{agent_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except FileNotFoundError:
                continue
            for entry in environ:
                if entry.startswith(b"RANK="):
                    pids[int(entry[5:])] = int(child)
    return pids


def stop(proc: subprocess.Popen) -> None:
    """Kill a run a failed test left behind (with its process group, if it leads one)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.wait()
