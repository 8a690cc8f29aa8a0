"""scripts/gpu_smoke.sh on a machine without a GPU (it must say so and exit 77), without a
usable Python (exit 2), and the pieces of its driver that read nvidia-smi, pytest and logs."""

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "gpu_smoke.sh"


def _driver():
    spec = importlib.util.spec_from_file_location("gpu_smoke", REPO_ROOT / "scripts" /
                                                  "gpu_smoke.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _run(tmp_path, *args, **env):
    environ = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHON=sys.executable, **env)
    environ.pop("OUT", None)
    return subprocess.run(["bash", str(SCRIPT), "--out", str(tmp_path), *args], cwd=REPO_ROOT,
                          env=environ, capture_output=True, text=True, timeout=240)


def test_without_a_gpu_it_reports_no_cuda_and_exits_77(tmp_path):
    proc = _run(tmp_path)
    assert proc.returncode == 77, proc.stdout + proc.stderr
    assert f"using {sys.executable}" in proc.stdout
    results = (tmp_path / "gpu_smoke_results.md").read_text()
    import torch

    assert f"torch {torch.__version__}" in results
    assert "no CUDA device: nothing was run (exit 77)" in results
    assert "Planned: synthetic data; CUDA-only tests (pytest -m cuda);" in results
    assert not list(tmp_path.glob(".*.tmp"))


def test_without_a_python_with_torch_it_exits_2(tmp_path):
    proc = _run(tmp_path, GPU_SMOKE_PYTHONS="/bin/false no-such-python-here")
    assert proc.returncode == 2
    message = ("no Python with torch found; tried: /bin/false (no torch) "
               "no-such-python-here (not found)")
    assert message in proc.stderr
    assert message in (tmp_path / "gpu_smoke_results.md").read_text()


def test_dry_run_plans_without_running(tmp_path):
    driver = _driver()
    assert driver.main(["--dry", "--out", str(tmp_path), "--only", "train.py", "speed"]) == 77
    results = (tmp_path / driver.RESULTS_NAME).read_text()
    assert ("Planned: train.py TRAIN.amp '' + --resume auto; train.py TRAIN.amp 'fp16' + "
            "--resume auto; train.py TRAIN.amp 'bf16' + --resume auto; speed vs original "
            "1.0.0.") in results


def test_nvidia_smi_parsing_and_the_context_verdict():
    driver = _driver()
    uuids = driver.parse_gpu_uuids("0, GPU-aaa\n1, GPU-bbb\nNo devices were found\n")
    assert uuids == {"GPU-aaa": 0, "GPU-bbb": 1}
    apps = driver.parse_compute_apps("101, GPU-aaa, 512\n102, GPU-bbb, [N/A]\n\n")
    assert apps[0] == (101, "GPU-aaa", 512.0) and apps[1][:2] == (102, "GPU-bbb")
    workers = {101, 102, 103}  # two evaluation workers and a loader worker
    good = {101: {0: 512.0}, 102: {1: 498.0}}
    ok, lines = driver.judge_contexts(good, master=100, workers=workers, num_gpus_used=2)
    assert ok and lines == ["- pid 101 (worker): GPU 0: 512 MiB",
                            "- pid 102 (worker): GPU 1: 498 MiB"]
    cases = {
        "the master process holds a CUDA context": {**good, 100: {0: 300.0}},
        "contexts on several GPUs": {101: {0: 512.0}, 102: {0: 300.0, 1: 498.0}},
        "3 process(es) of the run hold a context": {**good, 103: {0: 300.0}},
        "several workers on one GPU": {101: {0: 512.0}, 102: {0: 498.0}},
    }
    for message, contexts in cases.items():
        ok, lines = driver.judge_contexts(contexts, master=100, workers=workers,
                                          num_gpus_used=2)
        assert not ok and any(message in line for line in lines), (message, lines)
    assert driver.descendants(1, {2: 1, 3: 2, 4: 1, 5: 9}) == {2, 3, 4}
    shell = subprocess.Popen(["bash", "-c", "sleep 30 & sleep 30 & wait"])
    found = set()
    try:
        deadline = time.monotonic() + 20
        while len(found := driver.descendants(shell.pid, driver.parent_pids())) < 2:
            assert time.monotonic() < deadline, found
            time.sleep(0.05)
        assert shell.pid not in found and os.getpid() in driver.parent_pids()
    finally:
        for pid in found:  # the two sleeps this test started
            os.kill(pid, signal.SIGKILL)
        shell.kill()
        shell.wait()


def test_pytest_and_log_parsing(tmp_path):
    driver = _driver()
    junit = tmp_path / "r.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.a" name="test_ok_cuda" time="1"/>'
        '<testcase classname="tests.a" name="test_bad_cuda" time="1">'
        '<failure message="assert 1 == 2&#10;more">trace</failure></testcase>'
        '<testcase classname="tests.b" name="test_two_gpus" time="0">'
        '<skipped message="needs 2 GPUs"/></testcase></testsuite></testsuites>')
    assert driver.junit_outcomes(junit) == [("tests.a::test_ok_cuda", "PASS", ""),
                                            ("tests.a::test_bad_cuda", "FAIL", "assert 1 == 2"),
                                            ("tests.b::test_two_gpus", "SKIP", "needs 2 GPUs")]
    log = "\n".join([
        "[2026-01-01 10:00:00,000 INFO trainer.py line 1 7] Epoch: [1][0/10], Time: 0.1",
        "[2026-01-01 10:00:00,500 INFO checkpoint.py line 1 7] Saved encoder_epoch_1.pth",
        "[2026-01-01 10:00:02,000 INFO trainer.py line 1 7] Epoch: [2][9/10], Time: 0.1",
    ])
    assert abs(driver.seconds_per_step(log) - 2.0 / 19) < 1e-9
    assert driver.seconds_per_step("no training here") is None
