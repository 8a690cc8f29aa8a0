"""Per-FLOP view: how close inference and training come to this machine's matmul speed.

In one process, for every ``--threads`` count: the FLOPs of each workload are counted with
:class:`torch.utils.flop_counter.FlopCounterMode` (convolutions and matmuls, 2 FLOPs per
multiply-add; upsampling, softmax, normalisation and ReLU are not counted), the workload is
timed, and a large ``torch.mm`` (``--mm-size``) in fp32 and in bf16 is timed as the machine's
practical dense limit. Achieved GFLOP/s are shown as a share of both limits.

Workloads (fp32 and bf16 autocast):

* ``inference``: our multi-scale inference of one ``--width`` x ``--height`` image (scales
  300..600 as in ``bench_inference.py``): ``plain`` = the model as built, ``fast`` = the
  default ``MODEL.fast_inference`` path. Note that the fast path counts fewer FLOPs (the
  factored PPM and UPerNet heads), so its GFLOP/s understate its speed-up.
* ``train``: one SGD step (forward + backward + update) on a batch of 2 random 384 px images,
  with the default factored heads (``TRAIN.factored_heads``; fewer FLOPs for PPM and UPerNet)
  and with the plain ones.
* Peer: torchvision's ``deeplabv3_resnet50`` (random weights, nothing downloaded), a
  comparable dilated ResNet-50, on the same inference scales and training batch.

All measurements of one thread count alternate (matmul, workload, matmul, next workload, then
the reverse order) and medians are reported.

    python benchmarks/bench_flops.py [--models r50d_ppmds] [--repeats 3] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable

import common
from bench_inference import MODELS, NUM_CLASS, SCALES

sys.path.insert(0, str(common.REPO_ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from mit_semseg.inference.fast_path import optimize_for_inference  # noqa: E402
from mit_semseg.inference.predict import PredictOptions, predict_probs  # noqa: E402

CPU = torch.device("cpu")
TRAIN_BATCH, TRAIN_SIZE = 2, 384
PEER = "deeplabv3_resnet50 (torchvision)"


def scaled_inputs(width: int, height: int) -> list[torch.Tensor]:
    """One random ``(1, 3, h, w)`` input per test scale, sized as ``ValDataset`` sizes them."""
    inputs = []
    for short in SCALES:
        scale = min(short / min(width, height), 1000 / max(width, height))
        h, w = (8 * math.ceil(round(side * scale) / 8) for side in (height, width))
        inputs.append(torch.randn(1, 3, h, w))
    return inputs


def matmul_flops(size: int, dtype: torch.dtype, iters: int = 3) -> float:
    """FLOP/s of a ``size`` x ``size`` matmul in ``dtype`` (best of ``iters`` calls)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)
    best = math.inf
    for _ in range(iters):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def _autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def _ours_workloads(name: str, inputs: list, seg_size: tuple) -> dict[tuple, Callable]:
    encoder, decoder, fc_dim = MODELS[name]
    label = f"{encoder} + {decoder}"
    plain = common.build_module("ours", encoder, decoder, fc_dim, NUM_CLASS, None, train=False)
    fast = common.build_module("ours", encoder, decoder, fc_dim, NUM_CLASS, None, train=False)
    fast.load_state_dict(plain.state_dict())
    optimize_for_inference(fast, CPU)
    # the default (TRAIN.factored_heads) and the plain form of the heads
    trained = {factored: common.build_module("ours", encoder, decoder, fc_dim, NUM_CLASS, None,
                                             train=True, factored_heads=factored)
               for factored in (True, False)}
    optimizers = {factored: torch.optim.SGD(module.parameters(), lr=1e-3, momentum=0.9)
                  for factored, module in trained.items()}
    stride = 4 if "upernet" in decoder else 8
    batch = {"img_data": torch.randn(TRAIN_BATCH, 3, TRAIN_SIZE, TRAIN_SIZE),
             "seg_label": torch.randint(0, NUM_CLASS, (TRAIN_BATCH, TRAIN_SIZE // stride,
                                                       TRAIN_SIZE // stride))}

    def infer(module, amp):
        options = PredictOptions(amp=amp)
        return lambda: predict_probs(module, inputs, seg_size, CPU, options).argmax(0)

    def step(bf16, factored=True):
        def run():
            optimizers[factored].zero_grad(set_to_none=True)
            with _autocast(bf16):
                loss, _ = trained[factored](batch)
            loss.backward()
            optimizers[factored].step()
        return run

    return {(label, "inference", "plain", "fp32"): infer(plain, ""),
            (label, "inference", "fast (default)", "fp32"): infer(fast, ""),
            (label, "inference", "fast (default)", "bf16"): infer(fast, "bf16"),
            (label, "train step", "factored heads (default)", "fp32"): step(False),
            (label, "train step", "plain heads", "fp32"): step(False, factored=False),
            (label, "train step", "factored heads (default)", "bf16"): step(True)}


def _peer_workloads(inputs: list) -> dict[tuple, Callable]:
    from torchvision.models.segmentation import deeplabv3_resnet50

    model = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=NUM_CLASS,
                               aux_loss=False).eval()
    trained = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=NUM_CLASS,
                                 aux_loss=False).train()
    optimizer = torch.optim.SGD(trained.parameters(), lr=1e-3, momentum=0.9)
    images = torch.randn(TRAIN_BATCH, 3, TRAIN_SIZE, TRAIN_SIZE)
    labels = torch.randint(0, NUM_CLASS, (TRAIN_BATCH, TRAIN_SIZE, TRAIN_SIZE))

    def infer(bf16):
        def run():
            with torch.inference_mode(), _autocast(bf16):
                for x in inputs:  # its head upsamples to the input size itself
                    model(x)["out"].float().softmax(1)
        return run

    def step(bf16):
        def run():
            optimizer.zero_grad(set_to_none=True)
            with _autocast(bf16):
                loss = F.cross_entropy(trained(images)["out"].float(), labels)
            loss.backward()
            optimizer.step()
        return run

    return {(PEER, "inference", "eager", "fp32"): infer(False),
            (PEER, "inference", "eager", "bf16"): infer(True),
            (PEER, "train step", "", "fp32"): step(False),
            (PEER, "train step", "", "bf16"): step(True)}


def _count_flops(run: Callable) -> int:
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["r50d_ppmds"])
    parser.add_argument("--no-peer", action="store_true", help="skip deeplabv3_resnet50")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--mm-size", type=int, default=2048)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    inputs = scaled_inputs(args.width, args.height)
    seg_size = (args.height, args.width)
    rows, peaks = [], {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        workloads: dict[tuple, Callable] = {}
        for name in args.models:
            workloads.update(_ours_workloads(name, inputs, seg_size))
        if not args.no_peer:
            workloads.update(_peer_workloads(inputs))
        flops = {key: _count_flops(run) for key, run in workloads.items()}  # also warms up
        times = {key: [] for key in workloads}
        mm = {torch.float32: [], torch.bfloat16: []}
        for repeat in range(args.repeats):
            keys = list(workloads) if repeat % 2 == 0 else list(reversed(workloads))
            for key in keys:
                for dtype, runs in mm.items():
                    runs.append(matmul_flops(args.mm_size, dtype))
                start = time.perf_counter()
                workloads[key]()
                times[key].append(time.perf_counter() - start)
                print(f"{threads} thread(s) {' / '.join(k for k in key if k)}: "
                      f"{times[key][-1]:.3f} s", flush=True)
        peak = {dtype: statistics.median(runs) for dtype, runs in mm.items()}
        peaks[threads] = peak
        for key in workloads:
            seconds = statistics.median(times[key])
            rate = flops[key] / seconds
            model, workload, module, precision = key
            rows.append([model, workload, module, precision, threads,
                         f"{flops[key] / 1e9:.1f}", f"{seconds:.3f}", f"{rate / 1e9:.1f}",
                         f"**{100 * rate / peak[torch.float32]:.0f}%**",
                         f"{100 * rate / peak[torch.bfloat16]:.0f}%",
                         ", ".join(f"{t:.3f}" for t in times[key])])
    limits = "; ".join(f"{t} thread(s): fp32 {p[torch.float32] / 1e9:.1f}, bf16 "
                       f"{p[torch.bfloat16] / 1e9:.1f} GFLOP/s" for t, p in peaks.items())
    command = (f"python benchmarks/bench_flops.py --models {' '.join(args.models)} "
               f"--repeats {args.repeats} --threads {' '.join(map(str, args.threads))}"
               + (" --no-peer" if args.no_peer else ""))
    common.report("flops", "Per-FLOP view: achieved FLOP/s vs dense matmul "
                  "(`benchmarks/bench_flops.py`)", args, command, [
        f"Inference: multi-scale ({len(SCALES)} scales {SCALES}) of one "
        f"{args.width}x{args.height} image, {NUM_CLASS} classes, per image. Training: one SGD "
        f"step on {TRAIN_BATCH} images of {TRAIN_SIZE} px. FLOPs counted by `FlopCounterMode` "
        "(conv/matmul only, 2 per multiply-add; in bf16 the same operations are counted). "
        f"Machine limit: `torch.mm` {args.mm_size}x{args.mm_size}, median of the runs "
        f"interleaved with the workloads: **{limits}**.",
        "",
        f"`{PEER}` is the peer: a comparable dilated ResNet-50 (output stride 8, ASPP head), "
        "random weights.",
        "",
        common.markdown_table(["model", "workload", "module", "precision", "threads",
                               "GFLOP", "s", "GFLOP/s", "of fp32 matmul", "of bf16 matmul",
                               "runs (s)"], rows),
    ])


if __name__ == "__main__":
    main()
