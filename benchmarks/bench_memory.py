"""Peak memory of multi-scale inference per image size, ours against the original 1.0.0.

For each ``--sizes`` S one synthetic S x S image is prepared as in ``bench_inference.py``
(the original's test scales 300..600, max 1000) and run through our ``predict_probs`` + argmax
(variants as in ``bench_inference.py``) and through the original's ``eval.py`` loop, with the
same weights, each side in a fresh process. Two measures of memory:

* peak above the warmed process (what the inference itself adds): the image is run once to
  warm up (oneDNN builds its kernels), then the peak RSS counter is restarted
  (``/proc/self/clear_refs``) and the image runs again: the highest RSS of that run minus the
  RSS before it;
* whole-process max RSS (what the machine must have, as ``/usr/bin/time -v`` reports it): the
  highest RSS of the measuring process from its start to its end, interpreter, libraries,
  model and weights included.

Both sides run with the same fixed glibc mmap threshold, so that freed tensors leave RSS (see
``common.MALLOC_ENV``). Memory does not depend on background load, so one run per side and
size is enough (``--repeats`` for more).

    python benchmarks/bench_memory.py [--models r50d_ppmds] [--sizes 256 512 1024 2048]
"""

from __future__ import annotations

import argparse
import tempfile
import types
from pathlib import Path
from typing import Any

import common
from bench_inference import (
    MODELS,
    NUM_CLASS,
    SCALES,
    VARIANT_LABELS,
    VARIANTS,
    _calibrate_bn,
    _forward_ours,
    _forward_upstream,
    _prepare,
    _prepare_ours,
)

TARGET = 1.0  # ours / original peak memory, at every size


def measure(impl: str, job: dict[str, Any]) -> dict[str, Any]:
    """In the worker process: peak MiB of the second run of the image."""
    import time

    torch = common.worker_setup()
    opts = VARIANTS[job["variant"]][1]
    encoder, decoder, fc_dim = MODELS[job["model"]]
    module = common.build_module(impl, encoder, decoder, fc_dim, NUM_CLASS, job["weights"],
                                 train=False)
    device = torch.device("cpu")  # peak RSS is a host-memory measure
    if impl == "ours":
        module = _prepare_ours(module, opts, job, device)
    sample = torch.load(job["inputs"], weights_only=True)[0]
    seg_size = tuple(sample["seg_size"])

    def run() -> None:
        if impl == "ours":
            scores = _forward_ours(module, sample["img_data"], seg_size, opts, device)
        else:
            scores = _forward_upstream(module, sample["img_data"], seg_size, device)
        scores.argmax(0)

    run()
    warm_max = common.peak_rss_since_reset()  # since the process started
    before = common.reset_peak_rss()
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    peak = common.peak_rss_since_reset()
    return {"peak_mib": peak - before, "max_rss_mib": max(warm_max, peak), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser, repeats=1)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["r50d_ppmds"])
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS),
                        default=["ours", "upstream", "ours_plain"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512, 1024, 2048])
    args = parser.parse_args()
    if common.worker_main(measure, args):
        return
    upstream = common.prepare_parent(args)
    if "ours_onnxruntime" in args.variants or "ours_compiled" in args.variants:
        raise SystemExit("bench_memory measures the PyTorch variants only")
    import torch

    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        inputs = {}
        for size in args.sizes:
            folder = tmp / str(size)
            folder.mkdir()
            spec = types.SimpleNamespace(images=1, min_size=size, max_size=size)
            inputs[size], samples = _prepare(folder, spec)
        for name in args.models:
            encoder, decoder, fc_dim = MODELS[name]
            torch.manual_seed(0)
            reference = common.build_module("ours", encoder, decoder, fc_dim, NUM_CLASS, None,
                                            train=False)
            _calibrate_bn(reference, samples)
            weights = common.save_weights(reference, tmp, name)
            for size in args.sizes:
                print(f"{name}: {encoder} + {decoder}, {size}x{size}", flush=True)

                def run(variant: str, name: str = name, size: int = size,
                        weights: dict = weights) -> dict:
                    job = {"variant": variant, "model": name, "weights": weights,
                           "inputs": str(inputs[size])}
                    return common.run_worker(__file__, VARIANTS[variant][0], upstream, job,
                                             args.threads, env=common.MALLOC_ENV)

                runs = common.alternate(
                    args.repeats, run, impls=args.variants,
                    log=lambda v, r: (f"+{r['peak_mib']:.0f} MiB, "
                                      f"max RSS {r['max_rss_mib']:.0f} MiB"))
                whole = {v: (mib, r) for v, mib, r in
                         common.against_upstream(runs, "max_rss_mib")}
                for variant, mine, ratio in common.against_upstream(runs, "peak_mib"):
                    max_rss, max_ratio = whole[variant]
                    rows.append([f"{encoder} + {decoder}", f"{size}x{size}",
                                 VARIANT_LABELS[variant], f"{mine:.0f}", common.ratio_cell(ratio),
                                 f"{max_rss:.0f}", common.ratio_cell(max_ratio),
                                 f"{common.median_of(runs[variant], 'seconds'):.2f}"])
                    if ratio is not None:
                        notes.append(f"- {encoder} + {decoder}, {size} px, "
                                     f"{VARIANT_LABELS[variant]}: peak above the warmed process "
                                     f"{ratio:.2f}x "
                                     f"({common.verdict(ratio, TARGET, lower_is_better=True)}), "
                                     f"whole-process max RSS {max_ratio:.2f}x")
    command = (f"python benchmarks/bench_memory.py --models {' '.join(args.models)} "
               f"--variants {' '.join(args.variants)} --sizes "
               f"{' '.join(map(str, args.sizes))} --repeats {args.repeats} "
               f"--threads {args.threads}")
    common.report("memory", "Peak memory of multi-scale inference (`benchmarks/bench_memory.py`)",
                  args, command, [
        f"One synthetic square image per size, scales {SCALES} "
        f"(short side, max 1000), {NUM_CLASS} classes, fp32, glibc mmap threshold fixed on both "
        "sides. Two measures: **peak above the warmed process** = highest RSS during the "
        "second run of the image minus RSS before it (first run = warm-up): what inference "
        "adds; **whole-process max RSS** = highest RSS of the measuring process from start to "
        "end (interpreter, libraries, model and weights included): what the machine must "
        f"hold. Median of {args.repeats} run(s) per side. Seconds = the second run's time (for "
        "orientation only).",
        "",
        common.markdown_table(["model", "image", "variant", "peak above warmed process, MiB",
                               "vs original", "whole-process max RSS, MiB", "vs original",
                               "s"], rows),
        "",
        f"Target: ours <= {TARGET:g}x the original's peak above the warmed process at every "
        "size.",
        *notes,
    ])


if __name__ == "__main__":
    main()
