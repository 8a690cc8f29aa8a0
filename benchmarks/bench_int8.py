"""int8 start-up costs: compilation per image size, and the wall time of a whole evaluation.

Two measurements of ``MODEL.precision int8`` (issue 25), each its own section of
``benchmarks/RESULTS.md``; the speed per image against the original is
``bench_inference.py --variants ours upstream ours_int8 ...``, the accuracy
``bench_precision.py``.

``sizes`` (section ``int8_compile``): one fresh process per model (random weights, 150
classes, calibrated on two images, an empty inductor cache) calls the int8 network
(:func:`mit_semseg.deploy.int8.int8_segmenter`) at a series of image sizes, twice each:
the first call minus the second is what a new size costs (compilation, kernel generation),
and dynamo's counter gives the number of graphs compiled so far. The default fp32 path
(``MODEL.fast_inference``) is timed the same way beside it. Calibration and the start-up
before the first call (export, quantization) are reported apart.

``eval`` (section ``int8_eval``): the wall time of ``python eval.py`` on the synthetic
validation list (40 images of many sizes; default: the demo model, make it first with
``bash scripts/demo.sh``), each a fresh process, compilation included: fp32 (the default
path), int8 with nothing cached (calibration and compilation), int8 with the calibration
cached but an empty inductor cache, int8 with both cached. Recompilations are counted from
``TORCH_LOGS=recompiles``.

    python benchmarks/bench_int8.py [--part sizes|eval|all] [--models r18d_c1ds ...]
        [--dir ckpt/synthetic-mobilenetv2dilated-c1_deepsup] [--data data/synthetic]
        [--repeats 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common

# name -> (encoder, decoder, fc_dim)
MODELS = {
    "mnv2d_c1ds": ("mobilenetv2dilated", "c1_deepsup", 320),
    "r18d_c1ds": ("resnet18dilated", "c1_deepsup", 512),
    "r50d_ppmds": ("resnet50dilated", "ppm_deepsup", 2048),
    "r50_upernet": ("resnet50", "upernet", 2048),
    "hrnetv2_c1": ("hrnetv2", "c1", 720),
}
NUM_CLASS = 150
# (height, width): a 3:4 image at the original's test scales (short side 300..600, sides
# multiples of 8), other aspect ratios, and a small image (under ~83x83 px oneDNN plans the
# first convolution differently, which costs one more graph)
SIZES = ((304, 400), (376, 504), (456, 608), (528, 704), (600, 800), (400, 304), (448, 448),
         (512, 904), (64, 96))
DEMO_CFG = "config/synthetic-mobilenetv2dilated-c1_deepsup.yaml"


# ----------------------------------------------------------------------------- sizes
def measure_sizes(impl: str, job: dict[str, Any]) -> dict[str, Any]:
    """In the worker: per size, the first and second call of int8 and fp32 (seconds)."""
    import copy

    import torch._dynamo.utils as dynamo_utils

    from mit_semseg.deploy.int8 import calibrate_int8, int8_segmenter
    from mit_semseg.inference.fast_path import optimize_for_inference

    torch = common.worker_setup()
    encoder, decoder, fc_dim = MODELS[job["model"]]
    module = common.build_module(impl, encoder, decoder, fc_dim, NUM_CLASS, None, train=False)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    sizes = [tuple(size) for size in job["sizes"]]
    states = calibrate_int8(module, [torch.randn(1, 3, *sizes[0], generator=generator)
                                     for _ in range(2)])
    calibrate_s = time.perf_counter() - start
    start = time.perf_counter()
    quantized = int8_segmenter(module, states)
    setup_s = time.perf_counter() - start
    fast = optimize_for_inference(copy.deepcopy(module), torch.device("cpu"))
    rows = []
    for size in sizes:
        image = torch.randn(1, 3, *size, generator=generator)
        row: dict[str, Any] = {"size": size}
        for name, segmenter in (("int8", quantized), ("fp32", fast)):
            calls = []
            for _ in range(2):
                start = time.perf_counter()
                with torch.inference_mode():
                    segmenter.logits(image)
                calls.append(time.perf_counter() - start)
            row[name] = calls
        row["graphs"] = dynamo_utils.counters["stats"]["unique_graphs"]
        rows.append(row)
        print(f"    {size}: int8 {row['int8']}, fp32 {row['fp32']}, graphs {row['graphs']}",
              file=sys.stderr, flush=True)
    return {"calibrate_s": calibrate_s, "setup_s": setup_s, "rows": rows}


def run_sizes(args: argparse.Namespace) -> None:
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            encoder, decoder, _ = MODELS[name]
            print(f"{name}: {encoder} + {decoder}", flush=True)
            cache = Path(tmp) / f"inductor_{name}"
            result = common.run_worker(__file__, "ours", common.REPO_ROOT,
                                       {"model": name, "sizes": args.sizes}, args.threads,
                                       env={"TORCHINDUCTOR_CACHE_DIR": str(cache)})
            notes.append(f"- {encoder} + {decoder}: calibration on 2 images "
                         f"{result['calibrate_s']:.1f} s; start-up before the first call "
                         f"(export, quantization) {result['setup_s']:.1f} s; "
                         f"{result['rows'][-1]['graphs']} graph(s) compiled in all")
            for row in result["rows"]:
                height, width = row["size"]
                first, second = row["int8"]
                first32, second32 = row["fp32"]
                rows.append([f"{encoder} + {decoder}", f"{width}x{height}",
                             f"{first:.2f}", f"{second:.3f}", f"{first - second:.2f}",
                             row["graphs"], f"{first32:.2f}", f"{second32:.3f}",
                             f"**{second / second32:.2f}x**"])
    sizes = " ".join(f"{h}x{w}" for h, w in args.sizes)
    command = (f"python benchmarks/bench_int8.py --part sizes --models {' '.join(args.models)} "
               f"--sizes {sizes} --threads {args.threads}")
    common.report("int8_compile", "int8 compilation per image size "
                  "(`benchmarks/bench_int8.py --part sizes`)", args, command, [
        "One fresh process per model, empty inductor cache; the network up to the class "
        "scores (`segmenter.logits`), each size called twice in turn, in the order of the "
        "table. New size = first call - second call: compilation and kernel generation. "
        "Graphs = dynamo's count of compiled graphs after that size (1 = no recompilation "
        "so far). int8 vs fp32 = second calls.",
        "",
        common.markdown_table(["model", "image (WxH)", "int8 1st call (s)", "int8 2nd (s)",
                               "int8 new size (s)", "graphs", "fp32 1st (s)", "fp32 2nd (s)",
                               "int8 vs fp32"], rows),
        "",
        *notes,
    ])


# ----------------------------------------------------------------------------- eval.py
def _eval_run(cfg: Path, opts: list[str], env: dict[str, str], threads: int) -> dict:
    """One ``eval.py`` process: wall seconds, mIoU, recompilations, calibration seconds."""
    env = {**os.environ, **env, "PYTHONPATH": str(common.REPO_ROOT), "CUDA_VISIBLE_DEVICES": "",
           "OMP_NUM_THREADS": str(threads), "TORCH_LOGS": "recompiles"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(common.REPO_ROOT / "eval.py"), "--cfg", str(cfg),
                           "--gpus", "cpu", *opts], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        sys.exit(f"eval.py failed (exit {proc.returncode}):\n{log[-3000:]}")
    miou = re.search(r"Mean IoU: ([0-9.]+), Accuracy: ([0-9.]+)%", log)
    calibrated = re.search(r"calibrated in ([0-9.]+) s", log)
    return {"wall_s": wall, "miou": float(miou.group(1)), "acc": float(miou.group(2)),
            "recompiles": log.count("Recompiling function"),
            "calibrate_s": float(calibrated.group(1)) if calibrated else None}


def run_eval(args: argparse.Namespace) -> None:
    from mit_semseg.config import load_config

    root = common.REPO_ROOT
    data = Path(args.data) if Path(args.data).is_absolute() else root / args.data
    ckpt = Path(args.dir) if Path(args.dir).is_absolute() else root / args.dir
    cfg = root / DEMO_CFG
    checkpoint = args.checkpoint or load_config(cfg).VAL.checkpoint
    weights = [ckpt / f"{part}_{checkpoint}" for part in ("encoder", "decoder")]
    for path in (data / "validation.odgt", *weights):
        if not path.is_file():
            sys.exit(f"{path} not found: run `bash scripts/demo.sh` first, or pass --dir and "
                     "--data of the demo model")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        run_dir = tmp / "run"  # eval.py writes its results beside the weights
        run_dir.mkdir()
        for path in weights:
            shutil.copy(path, run_dir / path.name)
        opts = ["DIR", str(run_dir), "VAL.checkpoint", checkpoint, "VAL.workers", "0",
                "DATASET.root_dataset", str(data),
                "DATASET.list_train", str(data / "training.odgt"),
                "DATASET.list_val", str(data / "validation.odgt")]
        int8 = [*opts, "MODEL.precision", "int8"]

        def cached(name: str) -> dict[str, str]:
            return {"MIT_SEMSEG_HOME": str(tmp / f"home_{name}"),
                    "TORCHINDUCTOR_CACHE_DIR": str(tmp / f"inductor_{name}")}

        runs: dict[str, list[dict]] = {}
        cases = {
            "fp32 (default path)": lambda r: (opts, cached(f"fp32_{r}")),
            "int8, nothing cached (calibration + compilation)":
                lambda r: (int8, cached(f"cold_{r}")),
            "int8, calibration cached, empty inductor cache":
                lambda r: (int8, {**cached("warm"),
                                  "TORCHINDUCTOR_CACHE_DIR": str(tmp / f"inductor_cold_{r}")}),
            "int8, calibration and compiled code cached": lambda r: (int8, cached("warm")),
        }
        print("warming the shared caches (one int8 run)", flush=True)
        _eval_run(cfg, int8, cached("warm"), args.threads)
        for repeat in range(args.repeats):
            order = list(cases) if repeat % 2 == 0 else list(reversed(cases))
            for label in order:
                run_opts, env = cases[label](repeat)
                result = _eval_run(cfg, run_opts, env, args.threads)
                runs.setdefault(label, []).append(result)
                print(f"  repeat {repeat + 1}/{args.repeats} {label}: {result['wall_s']:.1f} s, "
                      f"mIoU {result['miou']:.4f}, {result['recompiles']} recompilation(s)",
                      flush=True)
    fp32 = statistics.median(r["wall_s"] for r in runs["fp32 (default path)"])
    rows = []
    for label, results in runs.items():
        wall = statistics.median(r["wall_s"] for r in results)
        calibration = [r["calibrate_s"] for r in results if r["calibrate_s"] is not None]
        rows.append([label, f"{wall:.1f}", f"**{wall / fp32:.2f}x**",
                     ", ".join(f"{r['wall_s']:.1f}" for r in results),
                     ", ".join(str(r["recompiles"]) for r in results),
                     ", ".join(f"{c:.1f}" for c in calibration) or "-",
                     f"{results[0]['miou']:.4f} / {results[0]['acc']:.2f}"])
    command = (f"python benchmarks/bench_int8.py --part eval --dir {args.dir} --data "
               f"{args.data} --repeats {args.repeats} --threads {args.threads}")
    common.report("int8_eval", "Wall time of a whole evaluation with int8 "
                  "(`benchmarks/bench_int8.py --part eval`)", args, command, [
        f"`python eval.py --cfg {DEMO_CFG}` on the synthetic validation list (40 images of "
        "different sizes, one scale), the trained demo model, each run a fresh process timed "
        "from start to exit (imports, model loading, calibration when not cached, "
        f"compilation, evaluation, result files); median of {args.repeats} alternating runs "
        "(after one run that fills the shared caches). Recompilations = `Recompiling "
        "function` lines of `TORCH_LOGS=recompiles` (0 = one graph for every size).",
        "",
        common.markdown_table(["run", "wall (s)", "vs fp32", "runs (s)", "recompilations",
                               "calibration (s)", "mIoU / pixel acc. (%)"], rows),
    ])


def _size(text: str) -> tuple[int, int]:
    height, width = text.lower().split("x")
    return int(height), int(width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser, repeats=2)
    parser.add_argument("--part", choices=("sizes", "eval", "all"), default="all")
    parser.add_argument("--models", nargs="+", choices=list(MODELS),
                        default=["r18d_c1ds", "r50d_ppmds", "r50_upernet"])
    parser.add_argument("--dir", default="ckpt/synthetic-mobilenetv2dilated-c1_deepsup",
                        help="eval part: folder of the demo model's weights")
    parser.add_argument("--data", default="data/synthetic",
                        help="eval part: the synthetic dataset (validation.odgt)")
    parser.add_argument("--checkpoint", default=None, help="VAL.checkpoint (default: config's)")
    parser.add_argument("--sizes", nargs="+", type=_size, default=list(SIZES),
                        help="sizes part: image sizes HxW, in the order they are run")
    args = parser.parse_args()
    if common.worker_main(measure_sizes, args):
        return
    sys.path.insert(0, str(common.REPO_ROOT))
    from mit_semseg.deploy.int8 import int8_unavailable

    unavailable = int8_unavailable()
    if unavailable:
        sys.exit(f"bench_int8: {unavailable}")
    if args.part in ("sizes", "all"):
        run_sizes(args)
    if args.part in ("eval", "all"):
        run_eval(args)


if __name__ == "__main__":
    main()
