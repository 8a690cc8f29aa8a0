"""``MODEL.precision int8`` in eval.py, eval_multipro.py and test.py: its setup errors (one line
each, before any model is built) by default, a real int8 run with ``-m slow``."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from eval_fixtures import CFG, NUM_VAL, make_tiny_run

from mit_semseg.cli import model_setup
from mit_semseg.deploy import int8

INT8 = ("MODEL.precision", "int8")
SCRIPTS = ["eval.py", "test.py", "eval_multipro.py"]


def _run(in_process, script, run, *pairs):
    imgs = ["--imgs", str(run.data / "validation.odgt")] if script == "test.py" else []
    code, out, err = in_process(script, *imgs, "--cfg", str(CFG), "--gpus", "cpu",
                                *run.overrides(), *pairs, streams=True)
    assert code == 2 and "Traceback" not in err, err
    return err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def tiny_int8_run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("int8_run"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_combinations_int8_cannot_run_are_refused_naming_the_keys(script, tiny_int8_run,
                                                                  in_process, monkeypatch):
    run = tiny_int8_run
    amp_key = "TEST.amp" if script == "test.py" else "VAL.amp"
    monkeypatch.setattr(model_setup, "int8_unavailable", lambda device: None)
    assert _run(in_process, script, run, *INT8, amp_key, "bf16") == (
        f"{script}: error: {amp_key} bf16 cannot be combined with MODEL.precision int8; set "
        f"{amp_key} ''")
    assert _run(in_process, script, run, *INT8, "MODEL.backend", "onnxruntime") == (
        f"{script}: error: MODEL.precision int8 runs with MODEL.backend torch, not "
        "onnxruntime; set MODEL.backend torch or MODEL.precision fp32")
    assert _run(in_process, script, run, *INT8, "MODEL.fast_inference", "False") == (
        f"{script}: error: MODEL.fast_inference False asks for the original's fp32 "
        "arithmetic, which MODEL.precision int8 is not; set one of them back")
    missing = run.data / "nope.odgt"
    line = _run(in_process, script, run, *INT8, "MODEL.calibration_list", str(missing))
    assert line.startswith(f"{script}: error: MODEL.calibration_list: ")
    assert str(missing) in line and line.endswith(
        "point MODEL.calibration_list at a list of images like those you will segment")


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_cpu_without_int8_units_or_torchao_is_refused_in_one_line(script, tiny_int8_run,
                                                                     in_process, monkeypatch):
    run = tiny_int8_run
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torchao" else real(name, *a))
    assert _run(in_process, script, run, *INT8) == (
        f"{script}: error: MODEL.precision int8: int8 inference needs torchao: pip install "
        "'mit_semseg[int8]' (or use MODEL.precision fp32)")
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "torchao" else real(name, *a))
    capabilities = {"architecture": "x86_64", "cpu_name": "Test CPU", "avx512_vnni": False}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    assert _run(in_process, script, run, *INT8) == (
        f"{script}: error: MODEL.precision int8: int8 inference needs a CPU with an int8 "
        "dot-product unit (AMX-INT8, AVX-512 VNNI, AVX-VNNI); this Test CPU has none (or use "
        "MODEL.precision fp32)")


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_eval_and_test_run_int8_from_one_calibration(tmp_path, in_process, inline_workers,
                                                      monkeypatch):
    """eval.py calibrates (once, cached), records the precision and counts the same pixels
    as fp32; eval_multipro.py (spawned workers) gives eval.py's confusion matrix and test.py,
    with the same weights and scales, reuses the calibration."""
    pytest.importorskip("torchao", reason="needs pip install 'mit_semseg[int8]'")
    reason = int8.int8_unavailable("cpu")
    if reason:
        pytest.skip(reason)
    run = make_tiny_run(tmp_path)
    monkeypatch.setenv("MIT_SEMSEG_HOME", str(tmp_path / "home"))
    scales = {"DATASET.imgSizes": "(96,)", "DATASET.imgMaxSize": "128"}
    confusion, metrics = {}, {}
    for precision in ("fp32", "int8"):
        code, out = in_process("eval.py", "--cfg", str(CFG), "--gpus", "cpu",
                               *run.overrides(**scales), "MODEL.precision", precision)
        assert code == 0, out[-3000:]
        confusion[precision] = np.load(run.ckpt / "confusion_matrix.npy")
        metrics[precision] = json.loads((run.ckpt / "eval_metrics.json").read_text())
    assert metrics["int8"]["precision"] == "int8" and metrics["fp32"]["precision"] == "fp32"
    assert confusion["int8"].sum() == confusion["fp32"].sum()
    cached = list((tmp_path / "home" / "int8").glob("*.pt"))
    assert len(cached) == 1

    def no_second_calibration(*args, **kwargs):
        raise AssertionError("calibrated again")

    monkeypatch.setattr(int8, "calibrate_int8", no_second_calibration)
    code, out = in_process("eval_multipro.py", "--cfg", str(CFG), "--gpus", "cpu", "--workers",
                           "2", *run.overrides(**scales), *INT8)
    assert code == 0, out[-3000:]
    assert inline_workers == ["spawn"]  # the master has calibrated: no fork
    np.testing.assert_array_equal(np.load(run.ckpt / "confusion_matrix.npy"), confusion["int8"])
    out_dir = tmp_path / "labels"
    code, out = in_process("test.py", "--imgs", str(run.data / "validation.odgt"), "--cfg",
                           str(CFG), "--gpus", "cpu",
                           *run.overrides(**scales, **{"TEST.result": str(out_dir)}), *INT8)
    assert code == 0, out[-3000:]
    assert len(list(out_dir.glob("*.png"))) == NUM_VAL
