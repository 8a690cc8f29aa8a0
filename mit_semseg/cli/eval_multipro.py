"""Evaluate with one process per device, several GPUs or CPU processes (``eval_multipro.py``).

Example::

    python eval_multipro.py --cfg ade20k-resnet50dilated-ppm_deepsup --gpus 0-3
    python eval_multipro.py --cfg synthetic-mobilenetv2dilated-c1_deepsup --gpus cpu \\
        --workers 2

The list is cut into contiguous shards, one per process (never an empty one). Every process
returns the integer confusion matrix of its shard; the master adds them, so the metrics are
identical whatever the number of processes. The master checks the list, the weight files and
DIR before starting any worker (exit status 2 on a setup error); with ``--model NAME`` it first
downloads the released model, and with ``MODEL.backend onnxruntime`` it exports the ONNX file
(:mod:`mit_semseg.cli.model_setup`). If a worker fails, the master stops the others and exits
with status 1 after printing the worker's error. Outputs are those of ``eval.py``.

Every worker leads its own process group, which holds its data-loader processes
(``VAL.workers``), so that the master ends each worker together with them: after a failure, on
Ctrl-C or SIGTERM, and after the results (any process left behind). A worker whose master is
gone (killed) ends its group after the image it is on.

Under ``torchrun`` (one node or several) the processes are torchrun's: each rank evaluates
its shard on ``--gpus cpu`` or on ``cuda:LOCAL_RANK``, rank 0 adds the confusion matrices and
alone writes the results::

    torchrun --nnodes 2 --nproc_per_node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \
        eval_multipro.py --cfg config/ade20k-resnet50dilated-ppm_deepsup.yaml --gpus 0
"""

from __future__ import annotations

import argparse
import logging
import os
import queue as queue_lib
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp

from mit_semseg.cli import common, model_setup
from mit_semseg.cli.devices import bind_cuda_device, resolve_devices
from mit_semseg.cli.eval import eval_job
from mit_semseg.engine.distributed import (
    DistContext,
    cleanup_distributed,
    init_distributed,
    launched_by_torchrun,
)
from mit_semseg.inference.evaluation import (
    EvalJob,
    EvalResult,
    evaluate_shard,
    report_results,
    shard_ranges,
)
from mit_semseg.models.zoo import PretrainedModel
from mit_semseg.nn.precision import check_amp

PROG = "eval_multipro.py"
logger = logging.getLogger("eval_multipro")

# How long the master waits for a message before checking that the workers are still alive.
_POLL_SECONDS = 0.5
# How long a worker that sent its result may take to exit before it is killed.
_EXIT_GRACE_SECONDS = 30.0
# process groups are POSIX; elsewhere a worker is ended alone
_PROCESS_GROUPS = hasattr(os, "setpgrp") and hasattr(os, "killpg")


EXAMPLES = (
    "{prog} --cfg ade20k-resnet50dilated-ppm_deepsup --gpus 0-3 DIR ckpt/my_run",
    "{prog} --cfg ade20k-resnet18dilated-ppm_deepsup --gpus cpu --workers 2",
    "{prog} --cfg my_config.yaml --gpus 0,2 VAL.checkpoint epoch_10.pth",
    "{prog} --model ade20k-hrnetv2-c1 --gpus 0-3   # results in ckpt/ade20k-hrnetv2-c1",
)


def parse_args(argv: list[str] | None = None, prog: str = PROG) -> argparse.Namespace:
    parser = common.script_parser(
        prog, "Evaluate a trained model (DIR/{encoder,decoder}_<VAL.checkpoint>) on\n"
        "DATASET.list_val with one process per device; the metrics equal eval.py's.",
        devices_help='GPUs, e.g. "0-3" or "0,2"; "cpu" for CPU processes', examples=EXAMPLES,
        released_models=True)
    parser.add_argument("--workers", type=int, default=None,
                        help="number of processes when --gpus is cpu (default: 1)")
    parser.add_argument("--start-method", choices=("auto", "fork", "spawn"), default="auto",
                        help="how worker processes start; auto = fork for CPU-only runs on "
                             "Linux with MODEL.backend torch, else spawn (default: %(default)s)")
    return parser.parse_args(argv)


def _lead_process_group() -> None:
    """Makes this worker the leader of a new process group, which the loader processes it
    starts join, so that the master can end them all at once (:func:`_end_group`)."""
    if _PROCESS_GROUPS:
        os.setpgrp()
        # out of the terminal's foreground group: writing to a terminal set to "stty tostop"
        # would stop it
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)


def _worker(rank: int, job: EvalJob, device: str, start: int, end: int, threads: int,
            messages: Any) -> None:
    """Evaluates one shard and reports progress, the result or the error through ``messages``."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker has the master's handler
    _lead_process_group()
    master = os.getppid()
    common.setup_logging(rank=1)  # warnings and errors only: the master does the talking

    def report_image(*_: Any) -> None:
        if os.getppid() != master:  # the master was killed: no one wants the result
            _end_group(os.getpid(), None)
        messages.put(("image", rank))

    try:
        bind_cuda_device(torch.device(device))  # before anything could touch GPU 0
        if threads > 0:
            torch.set_num_threads(threads)
        result = evaluate_shard(job, torch.device(device), (start, end), hooks=[report_image])
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


def _start_method(requested: str, devices: list[torch.device], master_runs_model: bool) -> str:
    """The multiprocessing start method for ``--start-method requested``.

    CUDA cannot be used in a forked child once the parent has initialised it (the master
    queries the GPUs while resolving ``--gpus``), so ``fork`` with CUDA devices is a usage
    error. CPU-only runs fork by default on Linux, which skips re-importing torch in every
    child (the master has run no torch computation yet, so forking is safe), except when
    ``master_runs_model``: with the onnxruntime backend or int8 the master may have exported
    or calibrated the model (thread pools that a forked child inherits in an unusable state).
    """
    cpu_only = all(d.type == "cpu" for d in devices)
    if requested == "fork" and not cpu_only:
        raise common.UsageError("--start-method fork cannot be used with CUDA devices (a "
                                "forked child cannot use CUDA); use spawn or auto")
    if requested != "auto":
        return requested
    forkable = cpu_only and not master_runs_model and sys.platform.startswith("linux")
    return "fork" if forkable else "spawn"


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


def _end_group(pid: int, proc: Any | None) -> None:
    """Kills the process group that worker ``pid`` leads: the worker and its loader processes.

    Without such a group (the worker has not made it yet, so it has no loader processes, or
    they have all exited) ``proc``, the master's handle of the worker, is killed alone."""
    try:
        if _PROCESS_GROUPS:
            os.killpg(pid, signal.SIGKILL)
            return
    except (ProcessLookupError, PermissionError):  # no such group (yet, or any more)
        pass
    if proc is not None and proc.is_alive():
        proc.kill()


def _end_workers(procs: list[Any], grace: float) -> None:
    """Waits up to ``grace`` seconds for each worker to exit by itself, then kills its process
    group (whatever is left of it) and reaps it."""
    deadline = time.monotonic() + grace
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        _end_group(proc.pid, proc)
        proc.join()


class _Terminated(Exception):
    """SIGTERM reached the master while the workers ran."""


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises :class:`_Terminated` (instead of ending the master at once, which would
    leave the workers running in their own process groups)."""
    def handler(signum: int, frame: Any) -> None:
        raise _Terminated("stopped by SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_workers(job: EvalJob, devices: list[torch.device], num_images: int,
                 start_method: str) -> list[EvalResult] | None:
    """One process per shard; their results, or None after a worker failed or a signal
    (logged). Every worker and loader process is gone when it returns."""
    shards = shard_ranges(num_images, len(devices))
    devices = devices[: len(shards)]
    threads = _threads_per_process(devices)
    mp_context = mp.get_context(start_method)
    messages = mp_context.Queue()
    procs: list[Any] = []
    grace = 0.0  # unless every result came, the workers are killed at once
    try:
        with _sigterm_raises():
            for rank, ((start, end), device) in enumerate(zip(shards, devices)):
                logger.info("process %d on %s: images [%d, %d)", rank, device, start, end)
                proc = mp_context.Process(
                    target=_worker, args=(rank, job, str(device), start, end, threads,
                                          messages))
                proc.start()
                procs.append(proc)
            results = _collect(procs, messages, num_images)
            grace = _EXIT_GRACE_SECONDS
            return results
    except (RuntimeError, _Terminated) as exc:
        logger.error("%s", exc)
        return None
    except KeyboardInterrupt:
        logger.error("interrupted (Ctrl-C)")
        return None
    finally:
        _end_workers(procs, grace)


def _torchrun_device(args: argparse.Namespace, cfg: Any) -> torch.device | None:
    """This rank's device when started by torchrun (``WORLD_SIZE`` > 1), else None."""
    if not launched_by_torchrun():
        return None
    if args.workers is not None:
        raise common.UsageError("--workers does not apply under torchrun, whose "
                                "--nproc_per_node sets the number of processes")
    if cfg.VAL.visualize:
        raise common.UsageError("VAL.visualize is not supported under torchrun (only rank 0 "
                                "writes files); run eval_multipro.py without torchrun")
    device = common.single_device(args.gpus or cfg.DEVICE,
                                  "; under torchrun each process uses one device")
    check_amp(cfg.VAL.amp, device, "VAL.amp")
    model_setup.check_backend(cfg, [device], "VAL.amp")
    return device


def _evaluate_rank(job: EvalJob, device: torch.device, dist_ctx: DistContext,
                   num_images: int) -> tuple[EvalResult | None, list[torch.device]]:
    """This rank's shard; on rank 0 the sum over the ranks (None after a failure, which it
    logs) and every rank's device. Other ranks get ``(None, [])``."""
    shards = shard_ranges(num_images, dist_ctx.world_size)
    outcome: Any = EvalResult(np.zeros((job.model.num_class,) * 2, dtype=np.int64), 0, 0.0)
    if dist_ctx.rank < len(shards):  # never an empty shard: spare ranks contribute nothing
        try:
            outcome = evaluate_shard(job, device, shards[dist_ctx.rank],
                                     progress=dist_ctx.is_main)
        except Exception:  # reported by rank 0 once every rank is done
            outcome = traceback.format_exc()
    gathered = dist_ctx.gather((str(device), outcome))
    if not dist_ctx.is_main:
        return None, []
    devices = [torch.device(d) for d, _ in gathered]
    outcomes = [o for _, o in gathered]
    failed = [(rank, text) for rank, text in enumerate(outcomes) if isinstance(text, str)]
    for rank, text in failed:
        logger.error("process %d failed:\n%s", rank, text)
    return (None if failed else sum(outcomes[1:], outcomes[0])), devices


def _main_torchrun(cfg: Any, release: PretrainedModel | None, device: torch.device,
                   prog: str, verbose: bool) -> int:
    """``main`` for one process of a torchrun job."""
    dist_ctx = init_distributed(cfg.DIST.backend, device.type == "cuda")
    if device.type == "cuda":
        device = torch.device("cuda", dist_ctx.local_rank)
    bind_cuda_device(device)
    try:
        # every rank fetches (a file lock makes them wait for one download per machine)
        job = eval_job(cfg, model_setup.inference_model(cfg, release, "VAL.checkpoint", "DIR",
                                                        "list_val", progress=dist_ctx.is_main))
        num_images = len(job.dataset())
    except common.SETUP_ERRORS as exc:
        cleanup_distributed(wait_for_peers=False)
        return common.usage_error(prog, exc, verbose)
    common.setup_logging(cfg.DIR, dist_ctx.rank, filename="eval_log.txt")
    logger.info("torchrun: %d process(es) on %d node(s), this is rank %d", dist_ctx.world_size,
                len(set(dist_ctx.gather(dist_ctx.node_rank))), dist_ctx.rank)
    total, devices = _evaluate_rank(job, device, dist_ctx, num_images)
    failed = dist_ctx.gather(dist_ctx.is_main and total is None)[0]
    cleanup_distributed()
    if failed:
        return common.EXIT_SOME_FAILED
    if dist_ctx.is_main:
        _, text = report_results(job, total, devices,
                                 extra={"processes": dist_ctx.world_size})
        print(text)
        print("Evaluation Done!")
    return 0


def main(argv: list[str] | None = None) -> int:
    prog = common.program_name(PROG) if argv is None else PROG
    common.setup_logging()
    try:
        args = parse_args(argv, prog)
        cfg, release = model_setup.load_script_config(args)
        torchrun_device = _torchrun_device(args, cfg)
    except common.SETUP_ERRORS as exc:
        return common.usage_error(prog, exc)
    if torchrun_device is not None:
        return _main_torchrun(cfg, release, torchrun_device, prog, args.verbose)
    try:
        devices = _devices(args, cfg)
        master_runs_model = cfg.MODEL.backend != "torch" or cfg.MODEL.precision != "fp32"
        start_method = _start_method(args.start_method, devices, master_runs_model)
        for device in set(devices):
            check_amp(cfg.VAL.amp, device, "VAL.amp")
        model_setup.check_backend(cfg, devices, "VAL.amp")
        job = eval_job(cfg, model_setup.inference_model(cfg, release, "VAL.checkpoint", "DIR",
                                                        "list_val"))
        num_images = len(job.dataset())
    except common.SETUP_ERRORS as exc:
        return common.usage_error(prog, exc, args.verbose)
    common.setup_logging(cfg.DIR, filename="eval_log.txt")
    results = _run_workers(job, devices, num_images, start_method)
    if results is None:
        return common.EXIT_SOME_FAILED
    total = sum(results[1:], results[0])
    _, text = report_results(job, total, devices, extra={"processes": len(results)})
    print(text)
    print("Evaluation Done!")
    return 0
