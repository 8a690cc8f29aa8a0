"""scripts/measure_quickstart.py: timings of the README commands and the machine description."""

import shlex
import sys

from eval_fixtures import load_script

measure = load_script("scripts/measure_quickstart.py")


def test_machine_names_cpu_cores_and_load():
    info = measure.machine()
    assert info["cpu"] and info["cores"] >= 1 and isinstance(info["amx"], bool)
    assert info["load_before"] >= 0


# a child that works until it has used this much CPU time, however fast the machine
_CHILD_CPU_S = 0.3
_BUSY_CHILD = (f"{shlex.quote(sys.executable)} -c 'import time\n"
               f"while time.process_time() < {_CHILD_CPU_S}: pass'")


def test_demo_setup_time_is_read_from_its_step_lines(tmp_path, monkeypatch):
    script = ("echo '=== [   0s] choosing the Python environment'; "
              "echo '=== [  37s] generating the synthetic dataset in ./data'; " + _BUSY_CHILD)
    monkeypatch.setitem(measure.COMMANDS, "demo", ["bash", "-c", script])
    result = measure.run("demo", tmp_path, tmp_path)
    assert result["returncode"] == 0 and result["setup_s"] == 37.0
    # the CPU time of the command's child (a grandchild of this process) is counted, and the
    # processes ran one after the other, so it cannot exceed the wall time (+ rounding)
    assert _CHILD_CPU_S <= result["cpu_s"] <= result["wall_s"] + 0.1
    assert "generating the synthetic dataset" in (tmp_path / "demo.log").read_text()


def test_test_setup_time_is_wall_minus_what_pytest_reports(tmp_path, monkeypatch):
    for closing in ("===== 530 passed, 2 skipped, 3 deselected in 0.25s (0:00:00) =====",
                    "1 failed, 10 passed in 0.25s"):
        monkeypatch.setitem(measure.COMMANDS, "tests",
                            ["bash", "-c", f"sleep 0.5; echo '{closing}'; exit 1"])
        result = measure.run("tests", tmp_path, tmp_path)
        assert result["returncode"] == 1
        assert abs(result["setup_s"] - (result["wall_s"] - 0.25)) < 0.11
