"""setup.py: the wheel, installed into a fresh virtualenv outside the repository, has the
console commands, the configs and the app's page, and trains, evaluates and segments from an
empty folder.

PyTorch and the other dependencies are not installed again: the new virtualenv sees the
folders that hold them through a ``.pth`` file, and the wheel is installed with ``--no-deps``.
The folders are added as plain paths, so the ``.pth`` files inside them (such as an editable
install of this repository) are not processed: the only ``mit_semseg`` is the wheel's.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("mit-semseg-train", "mit-semseg-eval", "mit-semseg-eval-multipro", "mit-semseg-test")
# the web page's command: its --help works without the app's extra packages
APP_COMMAND = "mit-semseg-app"
DEPENDENCIES = ("torch", "torchvision", "numpy", "cv2", "yacs", "tqdm", "matplotlib", "PIL",
                "yaml")
CONFIG = "synthetic-mobilenetv2dilated-c1_deepsup"
# small images, two iterations: the point is that the installed commands work together
TINY = ["DATASET.imgSizes", "(48,)", "DATASET.imgMaxSize", "64"]


def _run(args: list, cwd: Path, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _build_wheel(tmp: Path) -> Path:
    """The wheel of a copy of the package's sources (the repository stays untouched)."""
    pytest.importorskip("wheel", reason="building the wheel offline needs the 'wheel' package "
                                        "(pip install -e '.[test]')")
    source = tmp / "source"
    shutil.copytree(REPO_ROOT / "mit_semseg", source / "mit_semseg",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        shutil.copy(REPO_ROOT / name, source / name)
    dist = tmp / "dist"
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "--no-index", "-q", "-w", dist, source], tmp, dict(os.environ), timeout=180)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = dist.glob("mit_semseg-*.whl")
    return wheel


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    """A virtualenv with the wheel installed, seeing this interpreter's dependencies."""
    venv = tmp / "venv"
    created = _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp, dict(os.environ))
    assert created.returncode == 0, created.stderr
    python = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                   tmp, dict(os.environ)).stdout.strip()
    folders = {str(Path(importlib.import_module(name).__file__).parents[1])
               for name in DEPENDENCIES}
    Path(purelib, "_dependencies.pth").write_text("\n".join(sorted(folders)) + "\n")
    # --ignore-installed: never touch another environment's copy of the package
    install = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
                    "--no-index", "--ignore-installed", "-q", wheel], tmp, dict(os.environ),
                   timeout=180)
    assert install.returncode == 0, install.stdout + install.stderr
    return venv


@pytest.mark.slow
def test_wheel_installs_commands_and_configs_that_run_from_an_empty_folder(tmp_path):
    from mit_semseg.data.synthetic import generate

    wheel = _build_wheel(tmp_path)
    # the app's page and example photos travel in the wheel
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("static/index.html", "static/app.js", "static/app.css", "examples/coffee.jpg",
                 "examples/astronaut.jpg", "examples/chelsea.jpg", "examples/README.md"):
        assert f"mit_semseg/app/{name}" in names, name
    venv = _fresh_venv(tmp_path, wheel)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PATH=f"{bin_dir}{os.pathsep}"
               f"{env.get('PATH', '')}")

    where = _run([bin_dir / "python", "-c", "import mit_semseg; print(mit_semseg.__file__)"],
                 work, env)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr

    # every command's --help, concurrently (each start imports torch)
    helps = {c: subprocess.Popen([str(bin_dir / c), "--help"], cwd=work, env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for c in COMMANDS}
    helps[APP_COMMAND] = subprocess.Popen([str(bin_dir / APP_COMMAND), "--help"], cwd=work,
                                          env=env, text=True, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE)
    for command, proc in helps.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.startswith(f"usage: {command} ") and f"  {command} --" in out  # examples
        if command == APP_COMMAND:
            assert "pip install 'mit_semseg[app]'" in out
            continue
        assert f'"{command}: error: ..."' in out and CONFIG in out
        assert str(Path(sysconfig.get_path("purelib"))) not in out  # the venv's defaults.py

    # the packaged config's relative paths (data/synthetic, ckpt/..., demo_output/) from here
    generate(work / "data" / "synthetic", num_train=4, num_val=2, seed=0, min_size=48,
             max_size=64)
    train = _run([bin_dir / "mit-semseg-train", "--cfg", CONFIG, "--gpus", "cpu", *TINY,
                  "TRAIN.num_epoch", "1", "TRAIN.epoch_iters", "2", "TRAIN.batch_size_per_gpu",
                  "2", "TRAIN.workers", "0", "TRAIN.checkpoint_every", "0"], work, env)
    assert train.returncode == 0, train.stderr[-3000:]
    ckpt = work / "ckpt" / CONFIG
    assert (ckpt / "encoder_epoch_1.pth").is_file() and (ckpt / "decoder_epoch_1.pth").is_file()
    evaluate = _run([bin_dir / "mit-semseg-eval", "--cfg", CONFIG, "--gpus", "cpu", *TINY,
                     "VAL.checkpoint", "epoch_1.pth", "VAL.workers", "0"], work, env)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert "Evaluation Done!" in evaluate.stdout and (ckpt / "eval_metrics.json").is_file()
    segment = _run([bin_dir / "mit-semseg-test", "--imgs", "data/synthetic/images/validation",
                    "--cfg", CONFIG, "--gpus", "cpu", *TINY, "TEST.checkpoint", "epoch_1.pth"],
                   work, env)
    assert segment.returncode == 0, segment.stderr[-3000:]
    assert len(list((work / "demo_output").glob("*.png"))) == 2
    # run outputs only: no cache or download folder appears in the current directory
    assert {p.name for p in work.iterdir()} == {"data", "ckpt", "demo_output"}

