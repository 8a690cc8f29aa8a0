"""One 3x3 convolution, forward + backward: Winograd F(2x2, 3x3) against ``F.conv2d``.

The numbers behind :func:`mit_semseg.nn.winograd.winograd_pays` (which convolutions the
factored training heads run in Winograd form). Each shape is timed in one process, the two
forms alternating ``--repeats`` times after a warm-up, at each ``--threads`` count; the table
shows the medians and Winograd / direct. The process keeps freed memory as ``train.py`` does
(:func:`mit_semseg.nn.host_allocator.keep_freed_memory`; ``--default-malloc`` leaves glibc's
settings, under which the transforms' outputs are fresh pages each time).

    python benchmarks/bench_winograd.py [--threads 1 2] [--repeats 3] [--default-malloc]
        [--shapes 2048x512x48 1024x512x48 ...]   # in x out x side (square maps, batch 2)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import common
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mit_semseg.nn.host_allocator import keep_freed_memory  # noqa: E402 - source checkout
from mit_semseg.nn.winograd import winograd_conv3x3, winograd_pays  # noqa: E402

# ResNet-50 heads (PPM fusion on conv5, deep supervision, UPerNet fusion and FPN outputs at
# 384 px), then the edges of the policy: narrower, smaller maps
DEFAULT_SHAPES = ["2048x512x48", "1024x512x48", "512x512x96", "512x512x48", "1024x256x48",
                  "2048x512x24", "2048x512x16", "2048x512x12", "256x256x48"]
BATCH = 2


def _shape(text: str) -> tuple[int, int, int]:
    try:
        in_ch, out_ch, side = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected INxOUTxSIDE, got {text!r}") from None
    return in_ch, out_ch, side


def _step_seconds(conv, x: torch.Tensor, w: torch.Tensor, grad: torch.Tensor) -> float:
    start = time.perf_counter()
    y = conv(x, w)
    torch.autograd.grad(y, (x, w), grad)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shapes", type=_shape, nargs="+",
                        default=[_shape(s) for s in DEFAULT_SHAPES])
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc settings (train.py changes them)")
    parser.add_argument("--no-write", action="store_true",
                        help="print only, leave benchmarks/RESULTS.md alone")
    args = parser.parse_args(argv)
    if not args.default_malloc:
        keep_freed_memory()
    direct = lambda x, w: F.conv2d(x, w, padding=1)  # noqa: E731
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for in_ch, out_ch, side in args.shapes:
            torch.manual_seed(0)
            x = torch.randn(BATCH, in_ch, side, side, requires_grad=True)
            w = torch.randn(out_ch, in_ch, 3, 3, requires_grad=True)
            grad = torch.randn(BATCH, out_ch, side, side)
            times = {"direct": [], "winograd": []}
            for conv in (direct, winograd_conv3x3):  # warm-up: primitives, pages
                _step_seconds(conv, x, w, grad)
            for _ in range(args.repeats):
                times["direct"].append(_step_seconds(direct, x, w, grad))
                times["winograd"].append(_step_seconds(winograd_conv3x3, x, w, grad))
            d, wg = (statistics.median(times[k]) for k in ("direct", "winograd"))
            rows.append([threads, f"{in_ch} -> {out_ch}", f"{side}x{side}",
                         f"{d * 1e3:.1f}", f"{wg * 1e3:.1f}", f"**{wg / d:.2f}x**",
                         "yes" if winograd_pays(x, w) else "no"])
            print(*rows[-1], flush=True)
    malloc = ("glibc's default malloc settings" if args.default_malloc
              else "freed memory kept for reuse, as train.py runs")
    lines = [f"Forward + backward (input and weight gradients) of one 3x3 convolution, padding "
             f"1, batch {BATCH}, float32; median of {args.repeats} alternating runs after a "
             f"warm-up; {malloc}. `winograd_pays` = whether the factored training heads use "
             "the Winograd form for this shape.", "",
             common.markdown_table(["threads", "channels", "map", "direct ms",
                                    "Winograd ms", "Winograd / direct", "winograd_pays"],
                                   rows)]
    command = ("python benchmarks/bench_winograd.py --threads "
               + " ".join(map(str, args.threads)) + f" --repeats {args.repeats}"
               + (" --default-malloc" if args.default_malloc else ""))
    if [list(s) for s in args.shapes] != [list(_shape(s)) for s in DEFAULT_SHAPES]:
        command += " --shapes " + " ".join("x".join(map(str, s)) for s in args.shapes)
    common.report("winograd" + ("_default_malloc" if args.default_malloc else ""),
                  "Winograd against direct 3x3 convolution (`benchmarks/bench_winograd.py`)",
                  args, command, lines)


if __name__ == "__main__":
    main()
