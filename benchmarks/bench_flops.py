"""How close our inference forward comes to the machine's dense matmul speed.

In one process (``--threads`` torch threads): the FLOPs of our multi-scale inference for one
``--width`` x ``--height`` image (scales 300..600 as in ``bench_inference.py``) are counted
with :class:`torch.utils.flop_counter.FlopCounterMode` (convolutions and matmuls, 2 FLOPs per
multiply-add; upsampling, softmax, BatchNorm and ReLU are not counted), the same inference is
timed, and a large fp32 ``torch.mm`` (``--mm-size``) is timed as the machine's practical dense
limit. The measurements alternate (matmul, plain module, matmul, fast module, then the
reverse order) and medians are reported.

    python benchmarks/bench_flops.py [--models r18d_c1ds] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time

import common
from bench_inference import MODELS, NUM_CLASS, SCALES

sys.path.insert(0, str(common.REPO_ROOT))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from mit_semseg.engine.inference import predict_probs  # noqa: E402
from mit_semseg.perf import optimize_for_inference  # noqa: E402

CPU = torch.device("cpu")


def scaled_inputs(width: int, height: int) -> list[torch.Tensor]:
    """One random ``(1, 3, h, w)`` input per test scale, sized as ``ValDataset`` sizes them."""
    inputs = []
    for short in SCALES:
        scale = min(short / min(width, height), 1000 / max(width, height))
        h, w = (8 * math.ceil(round(side * scale) / 8) for side in (height, width))
        inputs.append(torch.randn(1, 3, h, w))
    return inputs


def matmul_flops(size: int, iters: int = 3) -> float:
    """FLOP/s of an fp32 ``size`` x ``size`` matmul (best of ``iters`` calls)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = math.inf
    for _ in range(iters):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["r18d_c1ds"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--mm-size", type=int, default=2048)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    inputs = scaled_inputs(args.width, args.height)
    seg_size = (args.height, args.width)
    rows, mm_runs = [], []
    for name in args.models:
        encoder, decoder, fc_dim = MODELS[name]
        plain = common.build_module("ours", encoder, decoder, fc_dim, NUM_CLASS, None,
                                    train=False)
        modules = {"plain": plain,
                   "fast_inference": optimize_for_inference(copy.deepcopy(plain), CPU)}
        flops, times = {}, {layout: [] for layout in modules}
        for layout, module in modules.items():  # the counting pass also warms up
            with FlopCounterMode(display=False) as counter:
                predict_probs(module, inputs, seg_size, CPU)
            flops[layout] = counter.get_total_flops()
        for repeat in range(args.repeats):
            order = list(modules) if repeat % 2 == 0 else list(reversed(modules))
            for layout in order:
                mm_runs.append(matmul_flops(args.mm_size))
                start = time.perf_counter()
                predict_probs(modules[layout], inputs, seg_size, CPU)
                times[layout].append(time.perf_counter() - start)
        for layout in modules:
            seconds = statistics.median(times[layout])
            rows.append((f"{encoder} + {decoder}", layout, flops[layout], seconds,
                         times[layout]))
            print(f"{name} {layout}: {flops[layout] / 1e9:.1f} GFLOP in {seconds:.3f} s",
                  flush=True)
    peak = statistics.median(mm_runs)
    table = [[model, layout, f"{flops / 1e9:.1f}", f"{seconds:.3f}",
              f"{flops / seconds / 1e9:.1f}", f"**{100 * flops / seconds / peak:.0f}%**",
              ", ".join(f"{t:.3f}" for t in times)]
             for model, layout, flops, seconds, times in rows]
    command = (f"python benchmarks/bench_flops.py --models {' '.join(args.models)} "
               f"--repeats {args.repeats} --threads {args.threads}")
    common.report("flops", "Achieved FLOP/s vs dense matmul (`benchmarks/bench_flops.py`)",
                  args, command, [
        f"Our fp32 multi-scale inference ({len(SCALES)} scales {SCALES}) of one "
        f"{args.width}x{args.height} image, {NUM_CLASS} classes; FLOPs counted by "
        "`FlopCounterMode` (conv/matmul only, 2 per multiply-add). Machine limit: fp32 "
        f"`torch.mm` {args.mm_size}x{args.mm_size}, median of {len(mm_runs)} runs "
        f"(interleaved with the model runs) = **{peak / 1e9:.1f} GFLOP/s** "
        f"(runs: {', '.join(f'{r / 1e9:.1f}' for r in mm_runs)}).",
        "",
        "`plain` = the model as built; `fast_inference` = BatchNorm folded and channels-last "
        "(the default of `eval.py`).",
        "",
        common.markdown_table(["model", "module", "GFLOP/image", "s/image", "GFLOP/s",
                               "of matmul peak", "runs (s)"], table),
    ])


if __name__ == "__main__":
    main()
