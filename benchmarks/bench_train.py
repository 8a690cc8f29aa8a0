"""Training step (forward + backward + SGD) time and memory, ours against the original 1.0.0.

For each model pair, both implementations train on the same weights and the same batch
(``--batch`` images of ``--size`` px, 150 classes, random labels at the decoder's output
stride). Ours runs through :func:`mit_semseg.engine.trainer.train_one_epoch` (the loop
``train.py`` uses) with :func:`~mit_semseg.engine.optim.build_optimizers`, in a process set up
as train.py sets up its own (:func:`mit_semseg.nn.host_allocator.keep_freed_memory`); the
original, whose
training loop lives in its unpackaged ``train.py``, runs that loop's steps (``zero_grad``,
forward, ``loss.mean().backward()``, one SGD step per net) on its own ``SegmentationModule``.

Each run is a fresh process; ``--warmup`` steps are dropped and the median of the ``--steps``
timed steps is that run's time. Memory = peak RSS of the process during the steps minus its
RSS just before the first step (activations, gradients, optimizer state and allocator slack);
this is measured the same way for both sides. Runs alternate ours/original ``--repeats``
times; the table shows the medians and every run.

Variants: ``ours`` (the default, ``TRAIN.factored_heads True``: the PPM and UPerNet fusion
convolutions over upsampled maps computed at the small maps' sizes, the heads' wide 3x3
convolutions in Winograd form), ``ours_default_malloc`` (the default without
``keep_freed_memory``: glibc returns large freed blocks to the kernel), ``ours_plain_heads``
(``TRAIN.factored_heads False``, the original's arithmetic), ``ours_bf16`` (the default with
``TRAIN.amp bf16``: autocast, fast on CPUs with AMX or AVX-512 bf16 units, numbers change
slightly), ``ours_channels_last`` (the default with the model and the batch in channels-last
memory, which is no training option: it measures what the layout alone would give),
``upstream`` (the original).

FLOPs per step: on the first run of each variant, one more forward + backward is counted by
:class:`torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products, 2 FLOPs per
multiply-add; the SGD update, normalisation and element-wise operations are not counted).

With ``--device cuda`` both sides train on GPU 0 (each step timed up to a device
synchronisation) and memory is the peak of ``torch.cuda.max_memory_allocated`` during the
steps minus the allocation before the first step.

    python benchmarks/bench_train.py [--models r18d_c1ds r50d_ppmds r50_upernet]
        [--variants ours upstream ours_default_malloc ours_plain_heads ours_bf16
                    ours_channels_last]
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
            "ours_default_malloc": ("ours", {"default_malloc": True}),
            "ours_plain_heads": ("ours", {"factored_heads": False}),
            "ours_bf16": ("ours", {"amp": "bf16"}),
            "ours_channels_last": ("ours", {"channels_last": True})}
VARIANT_LABELS = {"ours": "ours (fp32, default: factored heads)", "upstream": "original 1.0.0",
                  "ours_default_malloc": "ours (fp32, factored heads, glibc's default malloc)",
                  "ours_plain_heads": "ours (fp32, TRAIN.factored_heads False)",
                  "ours_bf16": "ours (bf16 autocast, factored heads)",
                  "ours_channels_last": "ours (fp32, factored heads, channels-last memory)"}
NUM_CLASS = 150
LR, MOMENTUM, WEIGHT_DECAY = 0.02, 0.9, 1e-4  # the original's config defaults
TARGET = 0.8  # ours / original time


def _current_rss_mib() -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        line = next(ln for ln in f if ln.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024.0


def _clock() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads)."""
    return time.perf_counter(), time.process_time()


def _intervals(stamps: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(stamps, stamps[1:])]


def _train_ours(module: Any, batch: dict, steps: int, opts: dict, device: Any
                ) -> list[tuple[float, float]]:
    from mit_semseg.engine.optim import PolySchedule, build_optimizers
    from mit_semseg.engine.trainer import TrainState, train_one_epoch
    from mit_semseg.nn.precision import grad_scaler

    optimizers = build_optimizers(module.encoder, module.decoder, lr_encoder=LR,
                                  lr_decoder=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    schedule = PolySchedule({"encoder": LR, "decoder": LR}, max_iters=steps, power=0.9)
    amp = opts.get("amp", "")
    state = TrainState(module=module, optimizers=optimizers, schedule=schedule,
                       scaler=grad_scaler(device, amp), epoch_iters=steps, device=device,
                       amp=amp, disp_iter=10**9)

    def stamp(_: Any) -> None:
        common.synchronize(device)
        stamps.append(_clock())

    stamps = [_clock()]
    train_one_epoch(state, [[batch]] * steps, on_step=stamp)
    return _intervals(stamps)


def _train_upstream(module: Any, batch: dict, steps: int, device: Any
                    ) -> list[tuple[float, float]]:
    import torch

    optimizers = [torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM,
                                  weight_decay=WEIGHT_DECAY)
                  for net in (module.encoder, module.decoder)]
    stamps = [_clock()]
    for _ in range(steps):
        module.zero_grad()
        loss, acc = module(batch)
        loss.mean().backward()
        for optimizer in optimizers:
            optimizer.step()
        common.synchronize(device)
        stamps.append(_clock())
    return _intervals(stamps)


def _step_flops(module: Any, batch: dict, amp: str) -> int:
    """FLOPs of one forward + backward of ``module`` on ``batch`` (either implementation), under
    autocast when ``amp`` is set, as the timed steps run (which also decides whether the
    heads take the Winograd form, float32 only)."""
    import contextlib

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    device_type = batch["img_data"].device.type
    module.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as counter:
        with (torch.autocast(device_type, dtype=dtypes[amp]) if amp
              else contextlib.nullcontext()):
            loss, _ = module(batch)
        loss.mean().backward()  # outside autocast, as the training loop runs it
    return counter.get_total_flops()


def measure(impl: str, job: dict[str, Any]) -> dict[str, Any]:
    """In the worker process: per-step times and the memory of one training run (and, if
    asked, the FLOPs of one more step)."""
    torch = common.worker_setup()
    encoder, decoder, fc_dim, _ = MODELS[job["model"]]
    device = common.worker_device(job)
    opts = VARIANTS[job["variant"]][1]
    if impl == "ours" and not opts.get("default_malloc"):
        from mit_semseg.nn.host_allocator import keep_freed_memory

        keep_freed_memory()  # as train.py does
    module = common.build_module(impl, encoder, decoder, fc_dim, NUM_CLASS, job["weights"],
                                 train=True,
                                 **({"factored_heads": opts.get("factored_heads", True)}
                                    if impl == "ours" else {})).to(device)
    batch = torch.load(job["inputs"], weights_only=True)
    batch = {k: v.to(device) for k, v in batch.items()}  # both sides start from device data
    if opts.get("channels_last"):  # not a training option: how far the layout alone goes
        module = module.to(memory_format=torch.channels_last)
        batch["img_data"] = batch["img_data"].contiguous(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        mem_before = torch.cuda.memory_allocated(device) / 2**20
    else:
        mem_before = _current_rss_mib()
    steps = job["warmup"] + job["steps"]
    if impl == "ours":
        times = _train_ours(module, batch, steps, opts, device)
    else:
        times = _train_upstream(module, batch, steps, device)
    timed = times[job["warmup"]:]
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else common.peak_rss_mib())
    result = {"step_s": statistics.median(wall for wall, _ in timed),
              "steps_s": [wall for wall, _ in timed],
              "cpu_step_s": statistics.median(cpu for _, cpu in timed),
              "mem_mib": peak - mem_before}
    if job.get("count_flops"):
        result["flops"] = _step_flops(module, batch, opts.get("amp", ""))
    return result


def _prepare_model(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Writes the weights and the batch of model ``name``; returns the job that names them."""
    import torch

    encoder, decoder, fc_dim, stride = MODELS[name]
    torch.manual_seed(0)
    reference = common.build_module("ours", encoder, decoder, fc_dim, NUM_CLASS, None,
                                    train=True)
    weights = common.save_weights(reference, tmp, name)
    label_size = args.size // stride
    inputs = tmp / f"{name}_batch.pt"
    torch.save({"img_data": torch.randn(args.batch, 3, args.size, args.size),
                "seg_label": torch.randint(-1, NUM_CLASS, (args.batch, label_size, label_size))},
               inputs)
    return {"model": name, "weights": weights, "inputs": str(inputs), "steps": args.steps,
            "warmup": args.warmup, "device": args.device}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser, repeats=3, thread_counts=(1, 2))
    common.add_device_arg(parser)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS),
                        default=["ours", "upstream", "ours_plain_heads", "ours_bf16"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=384, help="square crop size, px")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per run")
    args = parser.parse_args()
    if common.worker_main(measure, args):
        return
    upstream = common.prepare_parent(args)

    rows, notes = [], []
    flops: dict[tuple[str, str], int] = {}  # (model, variant) -> FLOPs of one step
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            encoder, decoder, _, _ = MODELS[name]
            print(f"{name}: {encoder} + {decoder}, batch {args.batch}, {args.size} px", flush=True)
            job = _prepare_model(name, args, Path(tmp))
            for threads in args.threads:
                def run(variant: str, job: dict = job, threads: int = threads) -> dict:
                    # the first run of each variant also counts the FLOPs of a step
                    key = (job["model"], variant)
                    answer = common.run_worker(__file__, VARIANTS[variant][0], upstream,
                                               dict(job, variant=variant,
                                                    count_flops=key not in flops), threads)
                    flops.setdefault(key, answer.get("flops"))
                    return answer

                print(f"  {threads} thread(s)", flush=True)
                runs = common.alternate(
                    args.repeats, run, impls=args.variants,
                    log=lambda v, r: f"{r['step_s']:.3f} s/step, +{r['mem_mib']:.0f} MiB")
                memory = {v: (mib, r) for v, mib, r in common.against_upstream(runs, "mem_mib")}
                cpu = {v: (s, r) for v, s, r in common.against_upstream(runs, "cpu_step_s")}
                theirs = flops[(name, "upstream")]
                for variant, mine_s, ratio in common.against_upstream(runs, "step_s"):
                    mine_m, memory_ratio = memory[variant]
                    mine_f = flops[(name, variant)]
                    mine_c, cpu_ratio = cpu[variant]
                    rows.append([f"{encoder} + {decoder}", threads, VARIANT_LABELS[variant],
                                 f"{mine_s:.3f}", common.ratio_cell(ratio),
                                 f"{mine_c:.3f}", "" if cpu_ratio is None else f"{cpu_ratio:.2f}x",
                                 f"{mine_f / 1e9:.1f}", f"{mine_f / theirs:.3f}x",
                                 f"{mine_m:.0f}",
                                 "" if memory_ratio is None else f"{memory_ratio:.2f}x",
                                 common.fmt_runs(runs[variant], "step_s")])
                    if ratio is not None:
                        notes.append(f"- {encoder} + {decoder}, {threads} thread(s), "
                                     f"{VARIANT_LABELS[variant]}: time ratio {ratio:.2f}x "
                                     f"({common.verdict(ratio, TARGET, lower_is_better=True)})")
    header = ["model", "threads", "variant", "s/step", "time vs original", "CPU s/step",
              "CPU time vs original", "GFLOP/step", "FLOPs vs original", "peak MiB",
              "memory vs original", "runs (s/step)"]
    command = (f"python benchmarks/bench_train.py --models {' '.join(args.models)} "
               f"--variants {' '.join(args.variants)} --batch {args.batch} --size {args.size} "
               f"--steps {args.steps} --warmup {args.warmup} --repeats {args.repeats} "
               f"--threads {' '.join(map(str, args.threads))}")
    common.report("train", "Training step (`benchmarks/bench_train.py`)", args, command, [
        f"Forward + backward + SGD step (momentum {MOMENTUM}, weight decay {WEIGHT_DECAY}), "
        f"batch {args.batch} of {args.size}x{args.size} px, {NUM_CLASS} classes, deep "
        f"supervision weight 0.4 for `*_deepsup`; same weights and batch on both sides. "
        f"Median of {args.steps} steps after {args.warmup} warm-up step(s) per run, "
        f"{args.repeats} alternating runs per variant, each a fresh process, for every thread "
        "count. CPU s/step = CPU time of the measuring process per step (all its threads; "
        "median), less sensitive than wall time to other processes on the machine, at one "
        "thread especially. GFLOP/step = convolutions and matrix products of one forward + "
        "backward (`FlopCounterMode`, 2 per multiply-add; the same at every thread count), counted "
        "on the first run of each variant. Peak MiB = peak "
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
