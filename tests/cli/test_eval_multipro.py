import json
import os
import queue
import time

import numpy as np
import pytest
import torch
from eval_fixtures import (  # noqa: F401
    CFG,
    NUM_VAL,
    bound_devices,
    in_process,
    run_piped,
    run_script,
    tiny_run,
)

from mit_semseg.cli import common
from mit_semseg.cli import eval_multipro as multipro


def _run(tiny_run, workers, *flags, **extra):  # noqa: F811
    return run_script(
        "eval_multipro.py", "--cfg", str(CFG), "--gpus", "cpu", "--workers", str(workers),
        *flags, *tiny_run.overrides(**extra),
    )


@pytest.mark.slow
def test_one_and_two_processes_give_identical_metrics(tiny_run):  # noqa: F811
    results = {}
    for workers in (1, 2):  # 2 processes: uneven shards of 2 and 1 images
        proc = _run(tiny_run, workers)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        metrics = json.loads((tiny_run.ckpt / "eval_metrics.json").read_text())
        assert metrics["processes"] == workers and metrics["num_images"] == NUM_VAL
        results[workers] = (np.load(tiny_run.ckpt / "confusion_matrix.npy"), metrics)
    np.testing.assert_array_equal(results[1][0], results[2][0])
    for key in ("mean_iou", "pixel_accuracy", "overall", "per_class"):
        assert results[1][1][key] == results[2][1][key]
    assert results[1][0].sum() > 0


@pytest.mark.slow
def test_more_processes_than_images_and_bad_workers(tiny_run, in_process):  # noqa: F811
    proc = _run(tiny_run, NUM_VAL + 2)  # never an empty shard: one process per image
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((tiny_run.ckpt / "eval_metrics.json").read_text())["processes"] == NUM_VAL
    code, out = in_process(
        "eval_multipro.py", "--cfg", str(CFG), "--gpus", "cpu", "--workers", "0",
        *tiny_run.overrides(),
    )
    assert code == 2 and "--workers must be >= 1" in out


@pytest.mark.slow
def test_worker_failure_stops_the_master_quickly(tiny_run, tmp_path):  # noqa: F811
    # the last record points at a corrupt image: the worker owning it fails
    lines = (tiny_run.data / "validation.odgt").read_text().splitlines()
    bad = json.loads(lines[-1])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"definitely not a jpeg")
    bad["fpath_img"] = str(broken)
    odgt = tmp_path / "val.odgt"
    odgt.write_text("\n".join(lines[:-1] + [json.dumps(bad)]) + "\n")
    start = time.monotonic()
    # spawn: the start method used with GPUs (CPU-only runs fork by default); the start-up
    # check of the list would catch this file before any worker starts, so it is off here
    proc = _run(tiny_run, 2, "--start-method", "spawn",
                **{"DATASET.list_val": str(odgt), "DATASET.preflight": "off"})
    assert proc.returncode == 1
    assert "worker 1 failed" in proc.stdout + proc.stderr
    assert time.monotonic() - start < 90


def test_a_failing_worker_leaves_no_process_behind(tiny_run, tmp_path):  # noqa: F811
    """Every process eval_multipro.py started is gone when it exits: its output pipe closes.

    With loader processes (``VAL.workers 1``), worker 1 fails on a corrupt image while the
    loader of worker 0 waits, for good, on a label that is a FIFO (as on a hung network
    mount). Ending worker 0 alone would leave its loader process behind, holding the pipe.
    """
    first, *_, last = [json.loads(line)
                       for line in (tiny_run.data / "validation.odgt").read_text().splitlines()]
    os.mkfifo(tmp_path / "never_written.png")
    (tmp_path / "broken.jpg").write_bytes(b"definitely not a jpeg")
    odgt = tmp_path / "val.odgt"
    odgt.write_text(json.dumps(dict(first, fpath_segm=str(tmp_path / "never_written.png")))
                    + "\n" + json.dumps(dict(last, fpath_img=str(tmp_path / "broken.jpg")))
                    + "\n")
    # the start-up check would open the FIFO and find the corrupt file: off, as for files
    # that changed after the start
    code, output = run_piped(
        ["eval_multipro.py", "--cfg", str(CFG), "--gpus", "cpu", "--workers", "2",
         *tiny_run.overrides(**{"DATASET.list_val": str(odgt), "DATASET.preflight": "off",
                                "VAL.workers": "1"})], timeout=120)
    assert code == 1, output
    assert "worker 1 failed" in output and "broken.jpg: cannot decode" in output


def test_fork_is_rejected_with_cuda_devices(tiny_run, in_process, monkeypatch):  # noqa: F811
    """Issue 17.8: the master has initialised CUDA (it counted the GPUs), so a forked child
    could not use it; --start-method fork with GPUs is a usage error, before any work."""
    gpus = [torch.device("cuda", 0), torch.device("cuda", 1)]
    with pytest.raises(common.UsageError, match="fork cannot be used with CUDA devices"):
        multipro._start_method("fork", gpus, False)
    assert multipro._start_method("auto", gpus, False) == "spawn"
    cpus = [torch.device("cpu")] * 2
    assert multipro._start_method("fork", cpus, False) == "fork"
    # the master may have run onnxruntime and torch threads (an export and its check, or an
    # int8 calibration)
    assert multipro._start_method("auto", cpus, True) == "spawn"
    monkeypatch.setattr(multipro, "_devices", lambda args, cfg: gpus)
    monkeypatch.setattr(multipro, "_run_workers", lambda *a: pytest.fail("workers started"))
    code, out = in_process("eval_multipro.py", "--cfg", str(CFG), "--gpus", "0,1",
                           "--start-method", "fork", *tiny_run.overrides())
    assert code == 2 and "--start-method fork cannot be used with CUDA devices" in out


def test_each_worker_binds_its_gpu_first(in_process, bound_devices, monkeypatch):  # noqa: F811
    """Issue 17.4: a worker on cuda:1 makes it the current device before it evaluates, so it
    creates no context on GPU 0."""
    def evaluate_shard(job, device, shard, hooks):
        assert bound_devices == ["cuda:1"] and device == torch.device("cuda", 1)
        return multipro.EvalResult(np.eye(2, dtype=np.int64), shard[1] - shard[0], 0.5)

    monkeypatch.setattr(multipro, "evaluate_shard", evaluate_shard)
    messages = queue.Queue()
    multipro._worker(1, None, "cuda:1", 2, 4, 0, messages)
    done = messages.get_nowait()
    assert done[:2] == ("done", 1) and done[3] == 2
def test_options_that_do_not_apply_under_torchrun(tiny_run, in_process, monkeypatch):  # noqa: F811
    # as torchrun sets it for every worker; both errors come before the process group is joined
    monkeypatch.setenv("WORLD_SIZE", "2")
    cases = [(["--workers", "2"], [], "--workers does not apply under torchrun"),
             ([], ["VAL.visualize", "True"], "VAL.visualize is not supported under torchrun"),
             (["--gpus", "cpux2"], [], "--gpus takes one device")]
    for flags, keys, message in cases:
        code, out = in_process("eval_multipro.py", "--cfg", str(CFG), "--gpus", "cpu", *flags,
                               *tiny_run.overrides(), *keys)
        assert code == 2 and message in out, out
