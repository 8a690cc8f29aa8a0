"""Overhead of synchronised BatchNorm versus plain BatchNorm, measured in one run.

Every configuration trains the same small conv-BN-ReLU stack (forward + backward) on the
same full batch; only the normalisation layer and the way the batch is split differ:

* ``plain BN``          nn.BatchNorm2d, one replica, full batch (the baseline);
* ``SyncBN clamp/plus, 1 replica`` SynchronizedBatchNorm2d without replication; "clamp"
                        (default) runs its own kernels, "plus" falls back to nn.BatchNorm's;
* ``DDP-synced BN``     DistributedSyncBatchNorm in a single process (no process group);
* ``plain BN, k thr``   DataParallelWithCallback with k CPU replicas and plain BN (the cost
                        of threads + split/gather alone);
* ``SyncBN, k thr``     the same with SynchronizedBatchNorm2d (adds the rendezvous).

Times are medians over ``--repeats`` runs of ``--iters`` iterations each. The table goes to
stdout and to the ``syncbn`` section of ``benchmarks/RESULTS.md``.

    python benchmarks/bench_syncbn.py --replicas 2 --iters 20 --size 32
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import common
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mit_semseg.nn import (  # noqa: E402 - after the path tweak for a source checkout
    DataParallelWithCallback,
    DistributedSyncBatchNorm,
    SynchronizedBatchNorm2d,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=2, help="CPU replicas (threads)")
    parser.add_argument("--iters", type=int, default=10, help="iterations per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="repeats (median is reported)")
    parser.add_argument("--size", type=int, default=32, help="spatial size H = W")
    parser.add_argument("--batch", type=int, default=8, help="full batch size")
    parser.add_argument("--channels", type=int, default=32, help="feature channels")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads per replica (1 avoids OpenMP oversubscription)")
    parser.add_argument("--no-write", action="store_true",
                        help="print only, leave benchmarks/RESULTS.md alone")
    return parser.parse_args(argv)


def build_net(norm_layer: Callable[[int], nn.Module], channels: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1)]
    for _ in range(3):
        layers += [norm_layer(channels), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1)]
    layers.append(norm_layer(channels))
    return nn.Sequential(*layers)


def time_config(model: nn.Module, x: torch.Tensor, iters: int) -> tuple[float, float]:
    """Seconds per forward+backward iteration: (wall clock, CPU time of the whole process).

    CPU time sums all threads and ignores time spent waiting, so it is the steadier number
    on a shared machine; wall clock is what training actually takes.
    """
    params = list(model.parameters())
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(iters):
        for p in params:
            p.grad = None
        model(x).square().mean().backward()
    return (time.perf_counter() - start_wall) / iters, (time.process_time() - start_cpu) / iters


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    k = args.replicas
    configs = {
        "plain BN": build_net(nn.BatchNorm2d, args.channels),
        "SyncBN clamp, 1 replica": build_net(SynchronizedBatchNorm2d, args.channels),
        "SyncBN plus, 1 replica": build_net(
            functools.partial(SynchronizedBatchNorm2d, eps_mode="plus"), args.channels),
        "DDP-synced BN, 1 process": build_net(DistributedSyncBatchNorm, args.channels),
        f"plain BN, {k} CPU replicas": DataParallelWithCallback(
            build_net(nn.BatchNorm2d, args.channels), num_cpu_replicas=k),
        f"SyncBN, {k} CPU replicas": DataParallelWithCallback(
            build_net(SynchronizedBatchNorm2d, args.channels), num_cpu_replicas=k),
    }
    # The first iterations of a process are far slower (kernel selection and JIT of the conv
    # primitives, thread pools), so every configuration is warmed up before any timing.
    for _ in range(2):
        for model in configs.values():
            time_config(model, x, args.iters)
    # Interleave the configurations repeat by repeat so slow drifts of the machine hit all.
    walls: dict[str, list[float]] = {name: [] for name in configs}
    cpus: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.repeats):
        for name, model in configs.items():
            wall, cpu = time_config(model, x, args.iters)
            walls[name].append(wall)
            cpus[name].append(cpu)
    medians = {name: statistics.median(v) for name, v in walls.items()}
    cpu_medians = {name: statistics.median(v) for name, v in cpus.items()}
    base, cpu_base = medians["plain BN"], cpu_medians["plain BN"]
    threaded = f"plain BN, {k} CPU replicas"
    lines = [
        f"Workload: 4x (conv3x3 + BN) stack, {args.channels} channels, batch {args.batch}, "
        f"{args.size}x{args.size}, forward + backward; median of {args.repeats} repeats x "
        f"{args.iters} iterations.",
        "",
        "| configuration | wall ms / iter | vs plain BN | vs plain BN, same replicas "
        "| CPU ms / iter | CPU vs plain BN |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, seconds in medians.items():
        same = f"{seconds / medians[threaded]:.2f}x" if "CPU replicas" in name else ""
        cpu = cpu_medians[name]
        lines.append(f"| {name} | {seconds * 1e3:.2f} | {seconds / base:.2f}x | {same} "
                     f"| {cpu * 1e3:.2f} | {cpu / cpu_base:.2f}x |")
    ratio = medians[f"SyncBN, {k} CPU replicas"] / medians[threaded]
    cpu_ratio = cpu_medians[f"SyncBN, {k} CPU replicas"] / cpu_medians[threaded]
    lines += [
        "",
        f"SyncBN synchronisation overhead ({k} CPU replicas vs plain BN on the same replicas): "
        f"**{ratio:.2f}x** wall clock, {cpu_ratio:.2f}x CPU time (timings are only comparable "
        "on an otherwise idle machine).",
    ]
    command = (f"python benchmarks/bench_syncbn.py --replicas {k} --iters {args.iters} "
               f"--repeats {args.repeats} --size {args.size} --batch {args.batch} "
               f"--channels {args.channels} --threads {args.threads}")
    common.report("syncbn", "SyncBN overhead (`benchmarks/bench_syncbn.py`)", args, command,
                  lines)


if __name__ == "__main__":
    main()
