"""scripts/measure_quickstart.py: timings of the README commands and the machine description."""

import os
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


def test_environment_size_counts_the_cuda_only_packages_apart(tmp_path):
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    mib = 1 << 20
    sizes = {"nvidia/cudnn/lib/libcudnn.so": 3 * mib, "triton/backends/libtriton.so": 2 * mib,
             "nvidia_cudnn_cu13-9.1.dist-info/RECORD": 1024,
             "torch/lib/libtorch_cpu.so": 5 * mib, "numpy/core.so": 4 * mib}
    for name, size in sizes.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_bytes(os.urandom(size))  # incompressible, no holes
    os.link(site / "numpy/core.so", site / "numpy/same_file.so")  # du counts it once
    size = measure.environment_size(tmp_path / "venv")
    cuda = sum(v for k, v in sizes.items() if k.startswith(("nvidia", "triton")))
    # the margins are the sizes of the files that must not be counted (again): torch's in the
    # CUDA-only part, the hard link in the total
    assert cuda <= size["cuda_only_bytes"] < cuda + sizes["torch/lib/libtorch_cpu.so"]
    total = sum(sizes.values())
    assert total <= size["total_bytes"] < total + sizes["numpy/core.so"]
    assert "CUDA-only" in measure.format_environment(size)
