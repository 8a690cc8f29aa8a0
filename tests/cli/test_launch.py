"""mit_semseg.cli.launch: Ctrl-C while a command starts (importing torch) is one line and exit
status 130, like a Ctrl-C later on."""
# ruff: noqa: F811  (the fixtures imported below are test arguments)

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_fixtures import CONFIG, REPO_ROOT, dataset, script_env, train_opts  # noqa: F401

from mit_semseg.cli import launch


def _maps(pid: int) -> str:
    """The files mapped into process ``pid`` (its shared libraries among them)."""
    return Path(f"/proc/{pid}/maps").read_text()


def _stopped(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] in "Tt"


def _interrupt_inside_torch_import(argv: list[str]) -> subprocess.Popen:
    """Start ``argv``, freeze it inside ``import torch`` and send it SIGINT there.

    The process is stopped (SIGSTOP) once torch's first library is mapped and is checked, while
    it stands still, not to have mapped ``libtorch_python`` yet, which torch loads later in
    the same import; SIGINT is then sent and the process continued, so the signal lands in the
    import whatever the machine's speed. A process that ran past that point before it was
    stopped (the test process stalled) is replaced by a new one.
    """
    for _ in range(3):
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=script_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        while "libtorch" not in _maps(proc.pid):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.001)
        proc.send_signal(signal.SIGSTOP)
        while not _stopped(proc.pid):
            time.sleep(0.001)
        if "libtorch_python" not in _maps(proc.pid):
            proc.send_signal(signal.SIGINT)
            proc.send_signal(signal.SIGCONT)
            return proc
        proc.kill()
        proc.communicate()
    pytest.fail("the command could not be stopped inside torch's import in 3 attempts")


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads /proc/PID/maps")
@pytest.mark.parametrize("script", ["train.py", "eval.py"])
def test_ctrl_c_while_importing_is_one_line_and_status_130(script):
    proc = _interrupt_inside_torch_import([sys.executable, script, "--cfg", str(CONFIG)])
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err == f"{script}: interrupted while starting; nothing was done\n"
    assert "Traceback" not in out


def test_ctrl_c_after_the_imports_is_the_same_one_line(dataset, tmp_path, monkeypatch,
                                                       capsys):
    # what a Ctrl-C that lands just after the import meets: the program's own handling
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("mit_semseg.cli.train.load_config", interrupted)
    assert launch.train(["--cfg", str(CONFIG), *train_opts(dataset, tmp_path)]) == 130
    assert capsys.readouterr().err == ("train.py: interrupted before training started; nothing "
                                       "to save\n")


def test_an_interrupt_the_program_lets_through_is_one_line(monkeypatch, capsys):
    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr("mit_semseg.cli.eval.main", interrupted)
    assert launch.eval(["--help"]) == 130
    assert capsys.readouterr().err == "eval.py: interrupted\n"
    monkeypatch.setenv("RANK", "1")  # under torchrun, where every worker got the Ctrl-C
    assert launch.eval(["--help"]) == 130
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("argv0, name", [("/venv/bin/mit-semseg-train", "mit-semseg-train"),
                                         ("venv/Scripts/mit-semseg-test.exe", "mit-semseg-test"),
                                         ("train.py", "x.py"), ("/usr/lib/pytest", "x.py")])
def test_errors_and_help_name_the_command_the_user_typed(argv0, name, monkeypatch):
    monkeypatch.setattr("sys.argv", [argv0])
    assert launch.program_name("x.py") == name
