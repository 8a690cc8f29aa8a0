"""Multi-scale inference per image, ours against the original 1.0.0, plus an accuracy check.

Inputs are synthetic ADE-like validation images (``--min-size``..``--max-size`` px), prepared
once by our ``ValDataset`` at the original's test scales (short side 300, 400, 500, 600,
``imgMaxSize`` 1000, sides rounded to multiples of 8), and fed identically to both sides, with
the same weights (150 classes; BatchNorm statistics calibrated on the images so predictions
are not degenerate). Ours runs :func:`mit_semseg.inference.predict.predict_probs` (the path of our
``eval.py``) and an argmax, on the module as ``eval.py`` prepares it (``MODEL.fast_inference``
on: BatchNorm folded, channels-last) unless the variant says otherwise; the original runs its
``eval.py`` loop on its own ``SegmentationModule``: for every scale a forward with
``segSize`` = image size, summing ``probs / len(imgSizes)`` into a zero score map, then
argmax, under ``torch.no_grad()``.

Time per image = the forward passes + averaging + argmax (what the original's eval.py times),
one warm-up image per run excluded (its time is reported apart as "first image": it holds the
compilation of ``ours_compiled`` / ``ours_int8`` and oneDNN's kernel generation);
"start-up" is the time to build the model and prepare the variant's path.
Runs alternate over all variants, each a fresh process, for every thread count.

Variants: ``ours`` (the default: ``MODEL.fast_inference``, i.e. BatchNorm folded, PPM and
UPerNet heads factored, the default convolution plan), ``ours_plan_<layout>_<kernel>`` (the
same with another plan: layout ``nchw``/``nhwc``, 1x1 kernel ``onednn``/``gemm``, or
``nchw_torch``, PyTorch's own dispatch), ``ours_plain`` (the model as built),
``ours_bf16`` (fast + bf16 autocast), ``ours_compiled`` (fast + ``torch.compile`` with
inductor freezing; compiled graphs are cached in ``--compile-cache``, so the first run
compiles cold and later runs show the warm-cache start-up), ``ours_onnxruntime`` (the model
exported once by ``mit_semseg.deploy.export`` in the parent, export time reported, run by
onnxruntime with the same thread count; the full-size tail in PyTorch), ``ours_int8``
(``MODEL.precision int8``: calibrated once in the parent on every input, then in each run
quantized and compiled, sharing ``--compile-cache`` with ``ours_compiled``) and
``ours_onnxruntime_int8`` (the export quantized by onnxruntime's ``quantize_static``, QDQ,
per-channel, calibrated on every input), the two int8 routes of issue 25.
Predictions of the first run of each side are compared: max |score difference| (on a grid of
every 4th pixel), share of equal pixels, and mIoU against the labels (equal within 1e-4 = pass).

    python benchmarks/bench_inference.py [--models r18d_c1ds] [--images 2] [--repeats 3]
        [--threads 1 2] [--variants ours upstream ours_plain ours_bf16 ours_compiled
        ours_onnxruntime ours_int8 ours_onnxruntime_int8] [--device cpu|cuda]

With ``--device cuda`` both sides run on GPU 0, the inputs copied from the host inside the
timed region, and each image is timed up to a device synchronisation (the compiled and
onnxruntime variants are CPU-only).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import common

# name -> (encoder, decoder, fc_dim)
MODELS = {
    "r18d_c1ds": ("resnet18dilated", "c1_deepsup", 512),
    "r50d_ppmds": ("resnet50dilated", "ppm_deepsup", 2048),
    "r50_upernet": ("resnet50", "upernet", 2048),
}
# variant -> (implementation, options of our inference path)
VARIANTS = {
    "ours": ("ours", {"fast": True}),
    "upstream": ("upstream", {}),
    "ours_plain": ("ours", {}),
    "ours_bf16": ("ours", {"fast": True, "amp": "bf16"}),
    "ours_compiled": ("ours", {"fast": True, "compile": True}),
    "ours_onnxruntime": ("ours", {"onnxruntime": True}),
    # the default path with each convolution plan
    **{f"ours_plan_{'nhwc' if layout else 'nchw'}_{kernel}":
       ("ours", {"fast": True, "plan": (layout, kernel)})
       for layout in (False, True) for kernel in ("onednn", "gemm")},
    "ours_plan_nchw_torch": ("ours", {"fast": True, "plan": (False, "torch")}),
    "ours_int8": ("ours", {"int8": True}),
    "ours_onnxruntime_int8": ("ours", {"onnxruntime": True, "int8": True}),
}
VARIANT_LABELS = {"ours": "ours (fp32, default fast_inference)", "upstream": "original 1.0.0",
                  "ours_plain": "ours (fp32, fast_inference False)",
                  "ours_bf16": "ours (fast_inference + bf16 autocast)",
                  "ours_compiled": "ours (fast_inference + torch.compile, freezing)",
                  "ours_onnxruntime": "ours exported, onnxruntime",
                  **{name: f"ours (fast_inference, plan "
                           f"{'NHWC' if opts['plan'][0] else 'NCHW'} + {opts['plan'][1]} 1x1)"
                     for name, (_, opts) in VARIANTS.items() if "plan" in opts},
                  "ours_int8": "ours int8 (MODEL.precision int8: PT2E + inductor)",
                  "ours_onnxruntime_int8": "ours exported, onnxruntime quantize_static int8"}
NUM_CLASS = 150
SCALES = (300, 400, 500, 600)
GRID = 4  # scores are compared on every GRID-th pixel (keeps the files small)
TARGET = 0.8  # ours / original time per image, fp32 (issue 15)
INT8_TARGET = 0.35  # the same, int8 on a CPU with int8 units (issue 25)
MIOU_TOLERANCE = 1e-4


def _forward_ours(module: Any, img_list: list, seg_size: tuple[int, int], opts: dict,
                  device: Any) -> Any:
    from mit_semseg.inference.predict import PredictOptions, predict_probs

    options = PredictOptions(amp=opts.get("amp", ""))
    return predict_probs(module, img_list, seg_size, device, options)


def _prepare_ours(module: Any, opts: dict, job: dict, device: Any) -> Any:
    """The variant's inference object (what ``predict_probs`` gets)."""
    import torch

    from mit_semseg.inference.banded_tail import LogitsSegmenter
    from mit_semseg.inference.fast_path import (
        ConvPlan,
        LogitsNetwork,
        compile_module,
        optimize_for_inference,
    )

    if opts.get("onnxruntime"):
        from mit_semseg.deploy.onnxruntime import OnnxRuntimeSegmenter

        path = job["onnx_int8"] if opts.get("int8") else job["onnx"]
        return OnnxRuntimeSegmenter(path, threads=torch.get_num_threads())
    if opts.get("int8"):
        from mit_semseg.deploy.int8 import int8_segmenter

        return int8_segmenter(module, torch.load(job["int8"], weights_only=True))
    if opts.get("fast"):
        plan = {"plan": ConvPlan(*opts["plan"])} if "plan" in opts else {}
        optimize_for_inference(module, device, **plan)
    if opts.get("compile"):
        network = LogitsNetwork(module.encoder, module.decoder)
        return LogitsSegmenter(compile_module(network, freezing=True))
    return module


def _forward_upstream(module: Any, img_list: list, seg_size: tuple[int, int],
                      device: Any) -> Any:
    import torch

    with torch.no_grad():
        scores = torch.zeros(1, NUM_CLASS, *seg_size, device=device)
        for img in img_list:
            probs = module({"img_data": img.to(device)}, segSize=seg_size)
            scores = scores + probs / len(img_list)
    return scores[0]


def measure(impl: str, job: dict[str, Any]) -> dict[str, Any]:
    """In the worker process: seconds per image (and, if asked, the predictions)."""
    import time

    torch = common.worker_setup()
    opts = VARIANTS[job["variant"]][1]
    encoder, decoder, fc_dim = MODELS[job["model"]]
    device = common.worker_device(job)
    setup_start = time.perf_counter()
    module = None
    if not opts.get("onnxruntime"):
        module = common.build_module(impl, encoder, decoder, fc_dim, NUM_CLASS, job["weights"],
                                     train=False).to(device)
    if impl == "ours":
        module = _prepare_ours(module, opts, job, device)
    setup_s = time.perf_counter() - setup_start
    samples = torch.load(job["inputs"], weights_only=True)
    times, cpu_times, outputs = [], [], []
    for index, sample in enumerate([samples[0]] + samples):  # the first pass warms up
        seg_size = tuple(sample["seg_size"])
        start, cpu_start = time.perf_counter(), time.process_time()
        if impl == "ours":
            scores = _forward_ours(module, sample["img_data"], seg_size, opts, device)
        else:
            scores = _forward_upstream(module, sample["img_data"], seg_size, device)
        pred = scores.argmax(0)
        common.synchronize(device)
        elapsed = time.perf_counter() - start
        if index == 0:
            first_s = elapsed
        else:
            times.append(elapsed)
            cpu_times.append(time.process_time() - cpu_start)
            outputs.append({"pred": pred.cpu(), "scores": scores[:, ::GRID, ::GRID].cpu()})
    if job.get("out"):
        torch.save(outputs, job["out"])
    result = {"image_s": sum(times) / len(times), "images_s": times, "first_s": first_s,
              "setup_s": setup_s, "cpu_image_s": sum(cpu_times) / len(cpu_times)}
    if opts.get("fast") and not opts.get("compile"):
        result["plan"] = _plan_in_use(module)
    return result


def _plan_in_use(module: Any) -> str:
    """The convolution plan ``module`` runs."""
    import torch

    from mit_semseg.inference.fast_path import PointwiseConv2d

    kernel = next(m.kernel for m in module.modules() if isinstance(m, PointwiseConv2d))
    weight = next(m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d)
                  and m.weight.dim() == 4 and m.weight.shape[1] > 1)
    nhwc = weight.is_contiguous(memory_format=torch.channels_last)
    return f"{'NHWC' if nhwc else 'NCHW'} + {kernel} 1x1"


def _prepare(tmp: Path, args: argparse.Namespace) -> tuple[Path, list]:
    """Writes the multi-scale inputs of ``--images`` synthetic images; returns them too."""
    import torch
    from yacs.config import CfgNode

    from mit_semseg.data import ValDataset
    from mit_semseg.data.synthetic import generate

    root = generate(tmp / "data", num_train=1, num_val=args.images, seed=0,
                    min_size=args.min_size, max_size=args.max_size)
    opt = CfgNode({"imgSizes": SCALES, "imgMaxSize": 1000, "padding_constant": 8,
                   "segm_downsampling_rate": 8, "random_flip": False})
    dataset = ValDataset(str(root), str(Path(root) / "validation.odgt"), opt)
    samples = []
    for i in range(len(dataset)):
        item = dataset[i]
        label = item["seg_label"][0]
        samples.append({"img_data": item["img_data"], "seg_size": tuple(label.shape),
                        "label": label})
    path = tmp / "inputs.pt"
    torch.save(samples, path)
    return path, samples


def _calibrate_bn(module: Any, samples: list) -> None:
    """Running BN statistics from the images (cumulative average over every scale)."""
    import torch

    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    module.train()
    with torch.no_grad():
        for sample in samples:
            for img in sample["img_data"]:
                # batch of two copies: the PPM's 1x1 pooled branch needs > 1 value per channel
                maps = module.encoder(img.repeat(2, 1, 1, 1), return_feature_maps=True)
                module.decoder(maps)
    module.eval()


def _compare(outs: dict[str, list], samples: list) -> tuple[list[str], bool]:
    """Score/prediction/mIoU agreement of every variant with the original."""
    import numpy as np

    from mit_semseg.metrics import confusion_matrix, scores_from_confusion

    def miou(outputs: list) -> tuple[float, float]:
        conf = sum(confusion_matrix(o["pred"].numpy(), s["label"].numpy(), NUM_CLASS)
                   for o, s in zip(outputs, samples))
        scores = scores_from_confusion(np.asarray(conf))
        return scores["miou"], scores["miou_present"]

    ref = outs["upstream"]
    ref_miou = miou(ref)
    lines, ok = [], True
    for variant, outputs in outs.items():
        if variant == "upstream":
            continue
        diff = max((o["scores"] - r["scores"]).abs().max().item()
                   for o, r in zip(outputs, ref))
        equal = sum((o["pred"] == r["pred"]).sum().item() for o, r in zip(outputs, ref))
        total = sum(r["pred"].numel() for r in ref)
        mine = miou(outputs)
        miou_diff = max(abs(mine[0] - ref_miou[0]), abs(mine[1] - ref_miou[1]))
        passed = miou_diff <= MIOU_TOLERANCE
        if VARIANTS[variant][1].get("amp") or VARIANTS[variant][1].get("int8"):
            lines.append(f"- {VARIANT_LABELS[variant]} (reduced precision, not expected to "
                         f"match): max |score diff| {diff:.2e}, equal pixels "
                         f"{100 * equal / total:.3f}%, |mIoU diff| {miou_diff:.2e}")
            continue
        ok = ok and passed
        lines.append(f"- {VARIANT_LABELS[variant]} vs original: max |score diff| {diff:.2e}, "
                     f"equal pixels {100 * equal / total:.4f}%, mIoU {mine[0]:.6f} vs "
                     f"{ref_miou[0]:.6f} (present classes {mine[1]:.6f} vs "
                     f"{ref_miou[1]:.6f}), |diff| {miou_diff:.1e} -> "
                     f"{'PASS' if passed else 'FAIL'} (tolerance {MIOU_TOLERANCE:g})")
    return lines, ok


def _export_onnx(name: str, weights: dict, tmp: Path) -> tuple[str, float]:
    """Exports the model of ``weights`` once (in the parent); returns the file and seconds."""
    import time

    from mit_semseg.deploy.export import export_onnx

    encoder, decoder, fc_dim = MODELS[name]
    module = common.build_module("ours", encoder, decoder, fc_dim, NUM_CLASS, weights,
                                 train=False)
    start = time.perf_counter()
    path = export_onnx(module, tmp / f"{name}.onnx")
    return str(path), time.perf_counter() - start


def _calibrate_int8(name: str, weights: dict, samples: list, tmp: Path) -> tuple[str, float]:
    """Our int8 calibration (``MODEL.precision int8``) on every input of the benchmark, once,
    in the parent; returns the file of the observers' state and seconds."""
    import time

    import torch

    from mit_semseg.deploy.int8 import calibrate_int8

    encoder, decoder, fc_dim = MODELS[name]
    module = common.build_module("ours", encoder, decoder, fc_dim, NUM_CLASS, weights,
                                 train=False)
    start = time.perf_counter()
    states = calibrate_int8(module, [img for s in samples for img in s["img_data"]])
    path = tmp / f"{name}_int8.pt"
    torch.save(states, path)
    return str(path), time.perf_counter() - start


def _quantize_onnx(onnx_path: str, samples: list, tmp: Path) -> tuple[str, float]:
    """onnxruntime's static int8 quantization of the export (QDQ, int8 per-channel weights,
    uint8 activations, min-max calibration on every input of the benchmark); returns the
    file and seconds."""
    import time

    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Inputs(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{"image": img.numpy()} for s in samples for img in s["img_data"]])

        def get_next(self) -> dict | None:
            return next(self.feeds, None)

    start = time.perf_counter()
    stem = Path(onnx_path).stem
    prepared, quantized = tmp / f"{stem}_pre.onnx", tmp / f"{stem}_int8.onnx"
    quant_pre_process(onnx_path, str(prepared))
    quantize_static(str(prepared), str(quantized), Inputs(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return str(quantized), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser, repeats=3, thread_counts=(1, 2))
    common.add_device_arg(parser)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["r18d_c1ds"])
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS),
                        default=["ours", "upstream", "ours_plain", "ours_bf16"])
    parser.add_argument("--images", type=int, default=2, help="synthetic validation images")
    parser.add_argument("--min-size", type=int, default=384)
    parser.add_argument("--max-size", type=int, default=512)
    parser.add_argument("--compile-cache", default=str(common.REPO_ROOT / "benchmarks" /
                                                       ".inductor-cache"),
                        help="TORCHINDUCTOR_CACHE_DIR of the ours_compiled runs (emptied at "
                             "the start, so the first run compiles cold)")
    args = parser.parse_args()
    if common.worker_main(measure, args):
        return
    upstream = common.prepare_parent(args)
    import shutil

    import torch

    compile_env = {"TORCHINDUCTOR_CACHE_DIR": args.compile_cache}
    if {"ours_compiled", "ours_int8"} & set(args.variants):
        shutil.rmtree(args.compile_cache, ignore_errors=True)
    rows, notes, startup, all_ok = [], [], [], True
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        inputs, samples = _prepare(tmp, args)
        sizes = ", ".join(f"{s['seg_size'][1]}x{s['seg_size'][0]}" for s in samples)
        for name in args.models:
            encoder, decoder, fc_dim = MODELS[name]
            print(f"{name}: {encoder} + {decoder}, images {sizes}, scales {SCALES}", flush=True)
            torch.manual_seed(0)
            reference = common.build_module("ours", encoder, decoder, fc_dim, NUM_CLASS, None,
                                            train=False)
            _calibrate_bn(reference, samples)
            weights = common.save_weights(reference, tmp, name)
            prepared: dict[str, str | None] = {"onnx": None, "onnx_int8": None, "int8": None}
            if {"ours_onnxruntime", "ours_onnxruntime_int8"} & set(args.variants):
                prepared["onnx"], export_s = _export_onnx(name, weights, tmp)
                startup.append(f"- {encoder} + {decoder}: ONNX export (once, in the parent) "
                               f"took {export_s:.1f} s")
            if "ours_onnxruntime_int8" in args.variants:
                prepared["onnx_int8"], quantize_s = _quantize_onnx(prepared["onnx"], samples, tmp)
                startup.append(f"- {encoder} + {decoder}: onnxruntime quantize_static (once, "
                               f"in the parent) took {quantize_s:.1f} s")
            if "ours_int8" in args.variants:
                prepared["int8"], calibrate_s = _calibrate_int8(name, weights, samples, tmp)
                startup.append(f"- {encoder} + {decoder}: int8 calibration on every input "
                               f"(once, in the parent) took {calibrate_s:.1f} s; each run "
                               "compiles on its first image")
            for threads in args.threads:
                def run(variant: str, name: str = name, weights: dict = weights,
                        threads: int = threads, prepared: dict = prepared) -> dict:
                    # the first run of each variant keeps its predictions for the comparison
                    out = tmp / f"{name}_{variant}_out.pt"
                    out = None if out.exists() else str(out)
                    job = {"variant": variant, "model": name, "weights": weights,
                           "inputs": str(inputs), "out": out, **prepared,
                           "device": args.device}
                    return common.run_worker(__file__, VARIANTS[variant][0], upstream, job,
                                             threads, env=compile_env)

                print(f"  {threads} thread(s)", flush=True)
                runs = common.alternate(args.repeats, run, impls=args.variants,
                                        log=lambda v, r: f"{r['image_s']:.3f} s/image")
                cpu = {v: (s, r) for v, s, r in common.against_upstream(runs, "cpu_image_s")}
                for variant, mine, ratio in common.against_upstream(runs, "image_s"):
                    mine_cpu, cpu_ratio = cpu[variant]
                    rows.append([f"{encoder} + {decoder}", threads, VARIANT_LABELS[variant],
                                 f"{mine:.3f}", common.ratio_cell(ratio), f"{mine_cpu:.3f}",
                                 "" if cpu_ratio is None else f"{cpu_ratio:.2f}x",
                                 common.fmt_runs(runs[variant], "image_s"),
                                 common.fmt_runs(runs[variant], "setup_s", "{:.1f}"),
                                 common.fmt_runs(runs[variant], "first_s", "{:.1f}")])
                    if variant == "ours":
                        chosen = ", ".join(r["plan"] for r in runs[variant])
                        notes.append(f"- {encoder} + {decoder}, {threads} thread(s): the "
                                     f"default path ran, run by run: {chosen}")
                    if VARIANTS[variant][1].get("int8"):
                        setup = common.fmt_runs(runs[variant], "setup_s", "{:.1f}")
                        work = ("loading the session" if VARIANTS[variant][1].get("onnxruntime")
                                else "loading, exporting, quantizing")
                        startup.append(f"- {encoder} + {decoder}, {threads} thread(s), "
                                       f"{VARIANT_LABELS[variant]}: start-up before the first "
                                       f"image ({work}) {setup} s per run")
                    if ratio is not None and not VARIANTS[variant][1].get("amp"):
                        target = INT8_TARGET if VARIANTS[variant][1].get("int8") else TARGET
                        notes.append(f"- {encoder} + {decoder}, {threads} thread(s), "
                                     f"{VARIANT_LABELS[variant]}: {ratio:.2f}x "
                                     f"({common.verdict(ratio, target, lower_is_better=True)})")
            outs = {v: torch.load(tmp / f"{name}_{v}_out.pt", weights_only=True)
                    for v in args.variants}
            lines, ok = _compare(outs, samples)
            all_ok = all_ok and ok
            notes += lines
    command = (f"python benchmarks/bench_inference.py --models {' '.join(args.models)} "
               f"--variants {' '.join(args.variants)} --images {args.images} "
               f"--min-size {args.min_size} --max-size {args.max_size} "
               f"--repeats {args.repeats} --threads {' '.join(map(str, args.threads))}")
    common.report("inference", "Multi-scale inference (`benchmarks/bench_inference.py`)", args,
                  command, [
        f"{args.images} synthetic images ({sizes} px), scales {SCALES} (short side, max 1000, "
        f"multiple of 8), {NUM_CLASS} classes, fp32 unless stated; seconds per image = "
        "forwards + score averaging + argmax, mean over the images after one warm-up image, "
        f"median of {args.repeats} alternating runs per variant (each a fresh process). "
        "CPU s/image = CPU time of the measuring process per image (all its threads; "
        "median of the runs), less sensitive than wall time to other processes on the "
        "machine, at one thread especially. "
        "\"start-up\" = building the model, loading the weights and preparing the "
        "inference path (BatchNorm folding, head factoring, convolution plan); "
        "\"first image\" = the warm-up image of each "
        "run, which also pays for compilation and oneDNN's kernel generation.",
        "",
        common.markdown_table(["model", "threads", "variant", "s/image", "vs original",
                               "CPU s/image", "CPU vs original",
                               "runs (s/image)", "start-up (s) per run",
                               "first image (s) per run"], rows),
        "",
        f"Target: ours <= {TARGET}x the original's time per image in fp32, at equal accuracy"
        f"; int8 <= {INT8_TARGET}x on a CPU with int8 units (accuracy: bench_precision.py).",
        *startup,
        *notes,
    ])
    if not all_ok:
        sys.exit("bench_inference: an fp32 variant does not match the original within "
                 f"{MIOU_TOLERANCE} mIoU")


if __name__ == "__main__":
    main()
