"""Training step (forward + backward + SGD) time and memory, ours against the original 1.0.0.

For each model pair, both implementations train on the same weights and the same batch
(``--batch`` images of ``--size`` px, 150 classes, random labels at the decoder's output
stride). Ours runs through :func:`mit_semseg.engine.trainer.train_one_epoch` (the loop
``train.py`` uses) with :func:`~mit_semseg.engine.optim.build_optimizers`; the original, whose
training loop lives in its unpackaged ``train.py``, runs that loop's steps (``zero_grad``,
forward, ``loss.mean().backward()``, one SGD step per net) on its own ``SegmentationModule``.

Each run is a fresh process; ``--warmup`` steps are dropped and the median of the ``--steps``
timed steps is that run's time. Memory = peak RSS of the process during the steps minus its
RSS just before the first step (activations, gradients, optimizer state and allocator slack);
this is measured the same way for both sides. Runs alternate ours/original ``--repeats``
times; the table shows the medians and every run.

Variant ``ours_bf16`` is ours with ``TRAIN.amp bf16`` (autocast; fast on CPUs with AMX or
AVX-512 bf16 units, numbers change slightly).

With ``--device cuda`` both sides train on GPU 0 (each step timed up to a device
synchronisation) and memory is the peak of ``torch.cuda.max_memory_allocated`` during the
steps minus the allocation before the first step.

    python benchmarks/bench_train.py [--models r18d_c1ds r50d_ppmds r50_upernet]
        [--variants ours upstream ours_bf16]
        [--batch 2] [--size 384] [--steps 3] [--warmup 1] [--repeats 3] [--threads 2]
        [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import common

# name -> (encoder, decoder, fc_dim, output stride of the decoder)
MODELS = {
    "r18d_c1ds": ("resnet18dilated", "c1_deepsup", 512, 8),
    "r50d_ppmds": ("resnet50dilated", "ppm_deepsup", 2048, 8),
    "r50_upernet": ("resnet50", "upernet", 2048, 4),
}
# variant -> (implementation, options of our training loop)
VARIANTS = {"ours": ("ours", {}), "upstream": ("upstream", {}),
            "ours_bf16": ("ours", {"amp": "bf16"})}
VARIANT_LABELS = {"ours": "ours (fp32)", "upstream": "original 1.0.0",
                  "ours_bf16": "ours (bf16 autocast)"}
NUM_CLASS = 150
LR, MOMENTUM, WEIGHT_DECAY = 0.02, 0.9, 1e-4  # the original's config defaults
TARGET = 0.8  # ours / original time


def _current_rss_mib() -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        line = next(ln for ln in f if ln.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024.0


def _train_ours(module: Any, batch: dict, steps: int, opts: dict, device: Any) -> list[float]:

    from mit_semseg.engine.optim import PolySchedule, build_optimizers
    from mit_semseg.engine.trainer import TrainState, train_one_epoch
    from mit_semseg.nn.precision import grad_scaler

    if opts.get("channels_last"):
        from mit_semseg.inference.fast_path import to_channels_last

        to_channels_last(module)
    optimizers = build_optimizers(module.encoder, module.decoder, lr_encoder=LR,
                                  lr_decoder=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    schedule = PolySchedule({"encoder": LR, "decoder": LR}, max_iters=steps, power=0.9)
    amp = opts.get("amp", "")
    state = TrainState(module=module, optimizers=optimizers, schedule=schedule,
                       scaler=grad_scaler(device, amp), epoch_iters=steps, device=device,
                       amp=amp, disp_iter=10**9)

    def stamp(_: Any) -> None:
        common.synchronize(device)
        stamps.append(time.perf_counter())

    stamps = [time.perf_counter()]
    train_one_epoch(state, [[batch]] * steps, on_step=stamp)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def _train_upstream(module: Any, batch: dict, steps: int, device: Any) -> list[float]:
    import torch

    optimizers = [torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM,
                                  weight_decay=WEIGHT_DECAY)
                  for net in (module.encoder, module.decoder)]
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        module.zero_grad()
        loss, acc = module(batch)
        loss.mean().backward()
        for optimizer in optimizers:
            optimizer.step()
        common.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def measure(impl: str, job: dict[str, Any]) -> dict[str, Any]:
    """In the worker process: per-step times and the memory of one training run."""
    torch = common.worker_setup()
    encoder, decoder, fc_dim, _ = MODELS[job["model"]]
    device = common.worker_device(job)
    module = common.build_module(impl, encoder, decoder, fc_dim, NUM_CLASS, job["weights"],
                                 train=True).to(device)
    batch = torch.load(job["inputs"], weights_only=True)
    batch = {k: v.to(device) for k, v in batch.items()}  # both sides start from device data
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        mem_before = torch.cuda.memory_allocated(device) / 2**20
    else:
        mem_before = _current_rss_mib()
    steps = job["warmup"] + job["steps"]
    if impl == "ours":
        times = _train_ours(module, batch, steps, VARIANTS[job["variant"]][1], device)
    else:
        times = _train_upstream(module, batch, steps, device)
    timed = times[job["warmup"]:]
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else common.peak_rss_mib())
    return {"step_s": statistics.median(timed), "steps_s": timed, "mem_mib": peak - mem_before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser, repeats=3)
    common.add_device_arg(parser)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS),
                        default=["ours", "upstream", "ours_bf16"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=384, help="square crop size, px")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per run")
    args = parser.parse_args()
    if common.worker_main(measure, args):
        return
    upstream = common.prepare_parent(args)
    import torch

    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            encoder, decoder, fc_dim, stride = MODELS[name]
            print(f"{name}: {encoder} + {decoder}, batch {args.batch}, {args.size} px", flush=True)
            torch.manual_seed(0)
            reference = common.build_module("ours", encoder, decoder, fc_dim, NUM_CLASS, None,
                                            train=True)
            weights = common.save_weights(reference, Path(tmp), name)
            label_size = args.size // stride
            inputs = Path(tmp) / f"{name}_batch.pt"
            torch.save({"img_data": torch.randn(args.batch, 3, args.size, args.size),
                        "seg_label": torch.randint(-1, NUM_CLASS,
                                                   (args.batch, label_size, label_size))},
                       inputs)
            job = {"model": name, "weights": weights, "inputs": str(inputs),
                   "steps": args.steps, "warmup": args.warmup, "device": args.device}
            runs = common.alternate(
                args.repeats,
                lambda v, job=job: common.run_worker(__file__, VARIANTS[v][0], upstream,
                                                     dict(job, variant=v), args.threads),
                impls=args.variants,
                log=lambda v, r: f"{r['step_s']:.3f} s/step, +{r['mem_mib']:.0f} MiB")
            memory = {v: (mib, r) for v, mib, r in common.against_upstream(runs, "mem_mib")}
            for variant, mine_s, ratio in common.against_upstream(runs, "step_s"):
                mine_m, memory_ratio = memory[variant]
                rows.append([f"{encoder} + {decoder}", VARIANT_LABELS[variant], f"{mine_s:.3f}",
                             common.ratio_cell(ratio), f"{mine_m:.0f}",
                             "" if memory_ratio is None else f"{memory_ratio:.2f}x",
                             common.fmt_runs(runs[variant], "step_s")])
                if ratio is not None:
                    notes.append(f"- {encoder} + {decoder}, {VARIANT_LABELS[variant]}: time "
                                 f"ratio {ratio:.2f}x "
                                 f"({common.verdict(ratio, TARGET, lower_is_better=True)})")
    header = ["model", "variant", "s/step", "time vs original", "peak MiB",
              "memory vs original", "runs (s/step)"]
    command = (f"python benchmarks/bench_train.py --models {' '.join(args.models)} "
               f"--variants {' '.join(args.variants)} --batch {args.batch} --size {args.size} "
               f"--steps {args.steps} --warmup {args.warmup} --repeats {args.repeats} "
               f"--threads {args.threads}")
    common.report("train", "Training step (`benchmarks/bench_train.py`)", args, command, [
        f"Forward + backward + SGD step (momentum {MOMENTUM}, weight decay {WEIGHT_DECAY}), "
        f"batch {args.batch} of {args.size}x{args.size} px, {NUM_CLASS} classes, deep "
        f"supervision weight 0.4 for `*_deepsup`; same weights and batch on both sides. "
        f"Median of {args.steps} steps after {args.warmup} warm-up step(s) per run, "
        f"{args.repeats} alternating runs per side, each a fresh process. Peak MiB = peak "
        + ("GPU memory allocated during the steps minus the allocation before the first step."
           if args.device == "cuda" else
           "RSS during the steps minus RSS before the first step."),
        "",
        common.markdown_table(header, rows),
        "",
        f"Target: ours <= {TARGET}x the original's step time.",
        *notes,
    ])


if __name__ == "__main__":
    main()
