"""Evaluate with one process per device, several GPUs or CPU processes (``eval_multipro.py``).

Example::

    python eval_multipro.py --cfg config/ade20k-resnet50dilated-ppm_deepsup.yaml --gpus 0-3
    python eval_multipro.py --cfg config/synthetic-mobilenetv2dilated-c1_deepsup.yaml \\
        --gpus cpu --workers 2

The list is cut into contiguous shards, one per process (never an empty one). Every process
returns the integer confusion matrix of its shard; the master adds them, so the metrics are
identical whatever the number of processes. If a worker fails, the master stops the others and
exits with code 1 after printing the worker's error. Outputs are those of ``eval.py``.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue as queue_lib
import sys
import time
import traceback
from typing import Any

import torch
import torch.multiprocessing as mp

from mit_semseg.cli import common
from mit_semseg.cli.devices import resolve_devices
from mit_semseg.cli.eval import eval_job
from mit_semseg.config import load_config
from mit_semseg.engine.evaluation import (
    EvalJob,
    EvalResult,
    evaluate_shard,
    report_results,
    shard_ranges,
)
from mit_semseg.engine.precision import check_amp

PROG = "eval_multipro.py"
logger = logging.getLogger("eval_multipro")

# How long the master waits for a message before checking that the workers are still alive.
_POLL_SECONDS = 0.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.script_parser(
        PROG, "Multi-process semantic segmentation evaluation",
        devices_help='GPUs, e.g. "0-3" or "0,2"; "cpu" for CPU processes')
    parser.add_argument("--workers", type=int, default=None,
                        help="number of processes when --gpus is cpu (default 1)")
    parser.add_argument("--start-method", choices=("auto", "fork", "spawn"), default="auto",
                        help="how worker processes start; auto = fork for CPU-only runs on "
                             "Linux, else spawn")
    return parser.parse_args(argv)


def _worker(rank: int, job: EvalJob, device: str, start: int, end: int, threads: int,
            messages: Any) -> None:
    """Evaluates one shard and reports progress, the result or the error through ``messages``."""
    common.setup_logging(rank=1)  # warnings and errors only: the master does the talking
    try:
        if threads > 0:
            torch.set_num_threads(threads)
        result = evaluate_shard(job, torch.device(device), start, end,
                                on_image=lambda: messages.put(("image", rank)))
        messages.put(("done", rank, result.confusion, result.num_images, result.seconds))
    except BaseException:
        messages.put(("error", rank, traceback.format_exc()))
        sys.exit(1)


def _devices(args: argparse.Namespace, cfg: Any) -> list[torch.device]:
    devices = resolve_devices(args.gpus or cfg.DEVICE)
    if args.workers is not None:
        if args.workers < 1:
            raise common.UsageError(f"--workers must be >= 1, got {args.workers}")
        if any(d.type != "cpu" for d in devices):
            raise common.UsageError("--workers only applies to --gpus cpu")
        devices = [torch.device("cpu")] * args.workers
    return devices


def _threads_per_process(devices: list[torch.device]) -> int:
    """CPU processes share the cores instead of each starting one thread per core (0: GPUs)."""
    cpu_procs = sum(d.type == "cpu" for d in devices)
    if not cpu_procs:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max((cores or 1) // cpu_procs, 1)


def _start_method(requested: str, devices: list[torch.device]) -> str:
    # CUDA cannot be used in forked children; CPU-only runs fork, which skips re-importing torch
    # in every child (the master has run no torch computation yet, so forking is safe)
    if requested != "auto":
        return requested
    cpu_only = all(d.type == "cpu" for d in devices)
    return "fork" if cpu_only and sys.platform.startswith("linux") else "spawn"


def _collect(procs: list[Any], messages: Any, num_images: int) -> list[EvalResult]:
    """Gathers the workers' results; raises RuntimeError as soon as one of them fails."""
    from tqdm import tqdm

    results: dict[int, EvalResult] = {}
    with tqdm(total=num_images, desc="eval", unit="img", dynamic_ncols=True) as bar:
        while len(results) < len(procs):
            try:
                msg = messages.get(timeout=_POLL_SECONDS)
            except queue_lib.Empty:
                dead = [r for r, p in enumerate(procs) if r not in results and not p.is_alive()]
                if dead:
                    # a worker that just finished may still have its last message in flight
                    time.sleep(_POLL_SECONDS)
                    if messages.empty():
                        r = dead[0]
                        raise RuntimeError(
                            f"worker {r} exited with code {procs[r].exitcode} without a result"
                        ) from None
                continue
            if msg[0] == "image":
                bar.update(1)
            elif msg[0] == "done":
                _, rank, conf, count, seconds = msg
                results[rank] = EvalResult(conf, count, seconds)
            else:
                raise RuntimeError(f"worker {msg[1]} failed:\n{msg[2]}")
    return [results[r] for r in sorted(results)]


def _run_workers(job: EvalJob, devices: list[torch.device], num_images: int,
                 start_method: str) -> list[EvalResult] | None:
    """One process per shard; their results, or None after a worker failed (logged)."""
    shards = shard_ranges(num_images, len(devices))
    devices = devices[: len(shards)]
    threads = _threads_per_process(devices)
    mp_context = mp.get_context(_start_method(start_method, devices))
    messages = mp_context.Queue()
    procs = []
    for rank, ((start, end), device) in enumerate(zip(shards, devices)):
        logger.info("process %d on %s: images [%d, %d)", rank, device, start, end)
        proc = mp_context.Process(
            target=_worker, args=(rank, job, str(device), start, end, threads, messages))
        proc.start()
        procs.append(proc)
    try:
        return _collect(procs, messages, num_images)
    except (RuntimeError, KeyboardInterrupt) as exc:
        logger.error("%s", exc)
        for proc in procs:
            proc.terminate()
        return None
    finally:
        for proc in procs:
            proc.join()


def main(argv: list[str] | None = None) -> int:
    common.setup_logging()
    try:
        args = parse_args(argv)
        cfg = load_config(args.cfg, args.opts)
        devices = _devices(args, cfg)
        for device in set(devices):
            check_amp(cfg.VAL.amp, device, "VAL.amp")
        job = eval_job(cfg)
        num_images = len(job.dataset())
        if num_images == 0:
            raise ValueError(f"no validation images in {job.list_val}")
    except common.SETUP_ERRORS as exc:
        return common.usage_error(PROG, exc)
    common.setup_logging(cfg.DIR, filename="eval_log.txt")
    results = _run_workers(job, devices, num_images, args.start_method)
    if results is None:
        return common.EXIT_SOME_FAILED
    total = sum(results[1:], results[0])
    _, text = report_results(job, total, devices, extra={"processes": len(results)})
    print(text)
    print("Evaluation Done!")
    return 0
