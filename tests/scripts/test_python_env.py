"""scripts/python_env.sh: which Python the README commands use, and that they create .venv/
rather than install into an interpreter that is not a virtual environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# the interpreter this virtual environment was made from (before 3.11, sys._base_executable
# inside a venv may name the venv's own python)
_BASE_VERSIONED = Path(sys.base_prefix) / "bin" / "python{}.{}".format(*sys.version_info[:2])
BASE_PYTHON = (_BASE_VERSIONED if _BASE_VERSIONED.is_file()
               else Path(getattr(sys, "_base_executable", sys.executable)))
IN_VENV = sys.prefix != sys.base_prefix


def choose(clone: Path, env_overrides: dict, path: str | None = None):
    """Runs choose_python in a copy of the scripts folder at ``clone``; returns the process."""
    (clone / "scripts").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "scripts" / "python_env.sh", clone / "scripts")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VIRTUAL_ENV")}
    env["PATH"] = path if path is not None else os.environ["PATH"]
    env.update(env_overrides)
    return subprocess.run(
        ["/bin/bash", "-c", 'source scripts/python_env.sh && choose_python && echo "PY=$PY"'],
        cwd=clone, env=env, capture_output=True, text=True, timeout=300,
    )


def chosen(proc) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip().splitlines()[-1].removeprefix("PY=")


@pytest.mark.skipif(not IN_VENV, reason="the tests do not run inside a virtual environment")
def test_an_interpreter_inside_a_virtualenv_is_used_as_it_is(tmp_path):
    proc = choose(tmp_path, {"PYTHON": sys.executable})
    assert Path(chosen(proc)) == Path(sys.executable)
    assert "Using the active Python environment" in proc.stdout
    assert not (tmp_path / ".venv").exists()


@pytest.mark.skipif((Path(sys.base_prefix) / "conda-meta").is_dir(),
                    reason="the base interpreter is a conda environment")
def test_an_interpreter_outside_a_virtualenv_creates_and_uses_dot_venv(tmp_path):
    proc = choose(tmp_path, {"PYTHON": str(BASE_PYTHON)})
    py = chosen(proc)
    assert py == str(tmp_path / ".venv" / "bin" / "python")
    assert "creating one in .venv/" in proc.stdout
    prefix = subprocess.run([py, "-c", "import sys; print(sys.prefix)"], capture_output=True,
                            text=True, check=True).stdout.strip()
    assert Path(prefix) == tmp_path / ".venv"
    # a second run reuses it
    again = choose(tmp_path, {"PYTHON": str(BASE_PYTHON)})
    assert chosen(again) == py and "Using the virtual environment .venv/" in again.stdout


@pytest.mark.skipif(not IN_VENV, reason="the tests do not run inside a virtual environment")
def test_python3_on_path_is_the_default(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "python3"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    proc = choose(tmp_path / "clone", {}, path=f"{bin_dir}:/usr/bin:/bin")
    assert Path(chosen(proc)) == Path(sys.executable)


def test_no_python_on_path_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = choose(tmp_path / "clone", {}, path=str(empty))
    assert proc.returncode != 0
    assert "no python3 on PATH" in proc.stderr and "PYTHON=" in proc.stderr


def test_a_missing_python_is_named(tmp_path):
    proc = choose(tmp_path, {"PYTHON": "python-that-does-not-exist"})
    assert proc.returncode != 0
    assert "PYTHON=python-that-does-not-exist: no such interpreter" in proc.stderr


def test_a_dot_venv_of_another_python_version_is_not_silently_used(tmp_path):
    fake = tmp_path / ".venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\necho 3.8\n")
    fake.chmod(0o755)
    proc = choose(tmp_path, {"PYTHON": str(BASE_PYTHON)})
    assert proc.returncode != 0
    assert ".venv has Python 3.8" in proc.stderr and "rm -rf .venv" in proc.stderr


def test_a_failed_venv_creation_is_explained_and_leaves_no_half_made_venv(tmp_path):
    # an interpreter without a working venv module (Debian without python3-venv): it gets as
    # far as .venv/bin/python, then fails for lack of ensurepip
    fake = tmp_path / "python3"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        '  -c) case "$2" in *in_env*) echo "0 3.11 /usr/bin/python3";; esac; exit 0;;\n'
        '  -m) mkdir -p .venv/bin && touch .venv/bin/python && chmod +x .venv/bin/python\n'
        '      echo "ensurepip is not available" >&2; exit 1;;\n'
        "esac\n"
    )
    fake.chmod(0o755)
    proc = choose(tmp_path / "clone", {"PYTHON": str(fake)})
    assert proc.returncode != 0
    assert "could not create .venv" in proc.stderr and "python3-venv" in proc.stderr
    assert not (tmp_path / "clone" / ".venv").exists()


@pytest.mark.parametrize("version,expected", [((3, 9), "torch==2.8.0 torchvision==0.23.0"),
                                              ((3, 11), "torch==2.14.1 torchvision==0.29.1")])
def test_pytorch_is_pinned_by_python_version(tmp_path, version, expected):
    # PyTorch 2.14 has no Python 3.9 wheels: a stub interpreter reports the version asked
    stub = tmp_path / "python"
    stub.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import sys; "
                    f"sys.version_info = {version}; exec(sys.argv[1])' \"$2\"\n")
    stub.chmod(0o755)
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO_ROOT / "scripts" / "python_env.sh", tmp_path / "scripts")
    proc = subprocess.run(["/bin/bash", "-c", f"source scripts/python_env.sh && PY={stub} "
                           "&& torch_requirements"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected


def _install_with_stub(tmp_path: Path, env_overrides: dict) -> list[list[str]]:
    """Runs install_project "[test]" with a stub interpreter that records its pip commands
    (and runs the real one for the version check); returns one argument list per pip call."""
    calls = tmp_path / "pip_calls"
    stub = tmp_path / "python"
    stub.write_text('#!/bin/sh\nif [ "$1" = -m ]; then printf \'%s\\n\' "$*" >> '
                    f'"{calls}"; exit 0; fi\nexec "{sys.executable}" "$@"\n')
    stub.chmod(0o755)
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO_ROOT / "scripts" / "python_env.sh", tmp_path / "scripts")
    env = {k: v for k, v in os.environ.items() if k != "TORCH_INDEX_URL"}
    env.update(env_overrides)
    proc = subprocess.run(["/bin/bash", "-c", f'source scripts/python_env.sh && PY="{stub}" '
                           '&& install_project "[test]"'], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [line.split() for line in calls.read_text().splitlines()]


def test_torch_index_url_is_used_for_pytorch_only(tmp_path):
    index = "http://127.0.0.1:9/whl/cpu"  # never contacted: the stub only records the calls
    torch_pip, project_pip = _install_with_stub(tmp_path, {"TORCH_INDEX_URL": index})
    assert torch_pip[:4] == ["-m", "pip", "install", "-q"]
    assert torch_pip[4:6] == ["--index-url", index]
    assert [a.split("==")[0] for a in torch_pip[6:]] == ["torch", "torchvision"]
    assert project_pip == ["-m", "pip", "install", "-q", "-e", ".[test]"]


def test_without_torch_index_url_one_pip_call_from_the_default_index(tmp_path):
    (only,) = _install_with_stub(tmp_path, {})
    assert "--index-url" not in only and any(a.startswith("torch==") for a in only)
    assert only[-2:] == ["-e", ".[test]"]
