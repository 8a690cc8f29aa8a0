"""A tiny synthetic dataset and an untrained checkpoint for the eval/test script tests."""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# the scripts need the model and data packages
pytest.importorskip("mit_semseg.models")
pytest.importorskip("mit_semseg.data.synthetic")

REPO_ROOT = Path(__file__).resolve().parents[2]
CFG = REPO_ROOT / "config" / "synthetic-mobilenetv2dilated-c1_deepsup.yaml"
NUM_VAL = 3


@dataclass
class TinyRun:
    data: Path
    ckpt: Path
    num_class: int

    def overrides(self, **extra: str) -> list[str]:
        """Config overrides pointing the synthetic config at the tiny data and checkpoint."""
        pairs = {
            "DIR": str(self.ckpt),
            "DATASET.root_dataset": str(self.data),
            "DATASET.list_train": str(self.data / "training.odgt"),
            "DATASET.list_val": str(self.data / "validation.odgt"),
            "DATASET.imgSizes": "(48,64)",
            "DATASET.imgMaxSize": "96",
            "VAL.checkpoint": "epoch_1.pth",
            "TEST.checkpoint": "epoch_1.pth",
            "VAL.workers": "0",
            "TEST.workers": "0",
            **extra,
        }
        return [token for pair in pairs.items() for token in pair]


def make_tiny_run(root: Path) -> TinyRun:
    from mit_semseg.config import load_config
    from mit_semseg.data.synthetic import SYNTHETIC_NUM_CLASS, generate
    from mit_semseg.models import ModelBuilder

    data = root / "data"
    generate(data, num_train=1, num_val=NUM_VAL, seed=0, min_size=40, max_size=72)
    cfg = load_config(CFG)
    torch.manual_seed(0)
    encoder = ModelBuilder.build_encoder(arch=cfg.MODEL.arch_encoder, fc_dim=cfg.MODEL.fc_dim)
    decoder = ModelBuilder.build_decoder(
        arch=cfg.MODEL.arch_decoder, fc_dim=cfg.MODEL.fc_dim, num_class=SYNTHETIC_NUM_CLASS
    )
    ckpt = root / "ckpt"
    ckpt.mkdir()
    torch.save(encoder.state_dict(), ckpt / "encoder_epoch_1.pth")
    torch.save(decoder.state_dict(), ckpt / "decoder_epoch_1.pth")
    return TinyRun(data, ckpt, SYNTHETIC_NUM_CLASS)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> TinyRun:
    return make_tiny_run(tmp_path_factory.mktemp("tiny_run"))


def run_script(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs a repository script in a subprocess (as a user would) on the CPU."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / script), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _kill_session(session: int) -> list[str]:
    """Kills every process of ``session`` (Linux); returns their command lines."""
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) != session:
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
            os.kill(int(entry.name), signal.SIGKILL)
            killed.append(f"{entry.name}: {command}")
        except (ProcessLookupError, PermissionError, FileNotFoundError):
            continue
    return killed


def run_piped(args: list[str], timeout: float, env: dict[str, str] | None = None
              ) -> tuple[int, str]:
    """Runs ``python ARGS`` in the repository root with stdout and stderr on one pipe, as
    ``command | cat`` does, and reads the pipe to its end, which comes only when every process
    holding it has exited: the command and every process it started. Fails the test after
    ``timeout`` seconds (then kills what is left of the command's session, and names it).

    Returns:
        ``(exit status, output)``.
    """
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=REPO_ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env=env or dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1"))
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        status = proc.poll()
        left = _kill_session(proc.pid)
        output, _ = proc.communicate()
        pytest.fail(f"the output pipe was still open after {timeout} s (command exit status "
                    f"{status}), held by: {left}\n{output[-3000:]}")
    return proc.returncode, output


def load_script(name: str):
    """Imports a repository script as a module (``test.py`` would clash with stdlib ``test``)."""
    spec = importlib.util.spec_from_file_location(f"_script_{Path(name).stem}", REPO_ROOT / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def in_process(capsys):
    """Runs a script's ``main(argv)`` in this process; returns ``(exit_code, output)``, or
    ``(exit_code, stdout, stderr)`` with ``streams=True``.

    The scripts configure the root logger; its handlers are restored afterwards.
    """
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)

    def call(script: str, *args: str, streams: bool = False) -> tuple:
        code = load_script(script).main(list(args))
        out = capsys.readouterr()
        return (code, out.out, out.err) if streams else (code, out.out + out.err)

    yield call
    for handler in root.handlers[:]:
        if handler not in saved[0]:
            root.removeHandler(handler)
            handler.close()
    for handler in saved[0]:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(saved[1])


@pytest.fixture
def bound_devices(monkeypatch) -> list:
    """Records the scripts' ``torch.cuda.set_device`` calls (CUDA device binding), CPU-only."""
    calls: list = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(str(device)))
    return calls


@pytest.fixture
def inline_workers(monkeypatch) -> list[str]:
    """Runs ``eval_multipro.py``'s workers' shards in this process, after checking that the
    job survives pickling (as a spawned worker receives it); returns the start methods the
    master chose. Forking here would be unsafe: this process has already run torch."""
    import pickle

    from mit_semseg.cli import eval_multipro
    from mit_semseg.inference.evaluation import evaluate_shard, shard_ranges

    methods: list[str] = []

    def run_workers(job, devices, num_images, start_method):
        methods.append(start_method)
        job = pickle.loads(pickle.dumps(job))
        return [evaluate_shard(job, device, shard)
                for shard, device in zip(shard_ranges(num_images, len(devices)), devices)]

    monkeypatch.setattr(eval_multipro, "_run_workers", run_workers)
    return methods
