"""Shared machinery of the ``bench_*.py`` scripts (not a library module).

Every benchmark compares our ``mit_semseg`` with the original 1.0.0 from PyPI. Both packages
are imported as ``mit_semseg``, so each measurement runs in a fresh subprocess whose
``PYTHONPATH`` holds exactly one of them (:func:`run_worker`); the parent alternates the two
implementations over the repeats so that background load hits both alike
(:func:`alternate`), and reports medians. Results go to one file, ``benchmarks/RESULTS.md``,
in which each benchmark owns one section per CPU kind, between its two markers
(:func:`section_name`, :func:`update_results_section`).

The original is looked up in ``--upstream``, ``$MIT_SEMSEG_UPSTREAM`` or ``<repo>/.upstream``;
install it apart with ``pip install --no-deps --target .upstream mit-semseg==1.0.0``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "RESULTS.md"
IMPLS = ("ours", "upstream")
IMPL_LABELS = {"ours": "ours", "upstream": "original 1.0.0"}
RESULTS_HEADER = (
    "# Benchmark results\n\n"
    "Written by the scripts in `benchmarks/` (each replaces only its own section). "
    "\"original\" is mit-semseg 1.0.0 from PyPI, run in its own process; see "
    "[docs/benchmarks.md](../docs/benchmarks.md) for what is measured. Sections are per CPU "
    "kind: `<benchmark>@<family>-<unit>` (see `cpu_kind` in `benchmarks/common.py`).\n"
)


# ----------------------------------------------------------------------------- parent side
def add_common_args(parser: argparse.ArgumentParser, repeats: int, threads: int = 2,
                    thread_counts: Sequence[int] | None = None) -> None:
    """Options every comparison has: where the original is, repeats, torch threads.

    With ``thread_counts``, ``--threads`` takes several values (a table per thread count,
    default ``thread_counts``); otherwise one (default ``threads``).
    """
    parser.add_argument("--upstream", default=None, help="folder holding the original package")
    parser.add_argument("--repeats", type=int, default=repeats,
                        help="alternating ours/original runs (the median is reported)")
    if thread_counts is None:
        parser.add_argument("--threads", type=int, default=threads,
                            help="torch intra-op threads in every measuring process")
    else:
        parser.add_argument("--threads", type=int, nargs="+", default=list(thread_counts),
                            help="torch intra-op threads per measuring process; each count "
                                 "is measured in turn")
    parser.add_argument("--no-write", action="store_true",
                        help="print only, leave benchmarks/RESULTS.md alone")
    parser.add_argument("--section", default=None,
                        help="write this section of RESULTS.md instead of the script's own "
                             "(e.g. a re-run of one thread count beside the full table)")
    parser.add_argument("--measure", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    """``--device``: where the measuring processes compute (the results of a CUDA run go to
    their own sections of RESULTS.md, ``<name>_cuda``)."""
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="compute device of the measuring processes (cuda = GPU 0)")


def find_upstream(explicit: str | None) -> Path:
    """Folder whose ``mit_semseg`` is the original 1.0.0; exits with instructions if absent."""
    candidates = [explicit, os.environ.get("MIT_SEMSEG_UPSTREAM"), str(REPO_ROOT / ".upstream")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "mit_semseg" / "dataset.py").is_file():
            return Path(candidate).resolve()
    sys.exit("the original mit_semseg 1.0.0 was not found: pass --upstream DIR or install it "
             "with `pip install --no-deps --target .upstream mit-semseg==1.0.0`")


def prepare_parent(args: argparse.Namespace) -> Path:
    """In the measuring parent: checks that ``--variants`` (if the script has it) compares
    ours with the original, makes our package importable, and returns the original's folder."""
    variants = getattr(args, "variants", None)
    if variants is not None and not {"ours", "upstream"} <= set(variants):
        sys.exit("--variants must include 'ours' and 'upstream'")
    upstream = find_upstream(args.upstream)
    sys.path.insert(0, str(REPO_ROOT))
    return upstream


def run_worker(script: str | Path, impl: str, upstream: Path, job: dict[str, Any],
               threads: int, timeout: float = 3600, env: dict[str, str] | None = None
               ) -> dict[str, Any]:
    """Runs ``script --measure impl --job JSON`` in a fresh process and returns its JSON answer.

    The child sees only one ``mit_semseg`` (ours or the original) on its path and gets the
    same thread settings either way; the package it really imported is checked.
    """
    root = REPO_ROOT if impl == "ours" else upstream
    extra = env or {}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # other entries of PYTHONPATH (e.g. a folder of extra packages) stay, minus any mit_semseg
    others = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
              if p and not (Path(p) / "mit_semseg").is_dir()]
    env.update(PYTHONPATH=os.pathsep.join([str(root), *others]), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), BENCH_THREADS=str(threads), **extra)
    cmd = [sys.executable, str(script), "--measure", impl, "--job", json.dumps(job)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=str(REPO_ROOT / "benchmarks"))
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(script).name} --measure {impl} failed "
                           f"(exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    module = Path(answer.get("module", "")).resolve()
    if not module.is_relative_to(root.resolve()):
        raise RuntimeError(f"the {impl} worker imported {module}, expected a file under {root}")
    return answer


def alternate(repeats: int, measure: Callable[[str], dict[str, Any]],
              impls: Sequence[str] = IMPLS, log: Callable[[str, dict], str] | None = None
              ) -> dict[str, list[dict[str, Any]]]:
    """``measure(impl)`` for every impl, ``repeats`` times, in alternating order.

    The order flips each repeat (ours, original, original, ours, ...) so that neither side
    always runs first after the other's process exits.
    """
    runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
    for repeat in range(repeats):
        order = list(impls) if repeat % 2 == 0 else list(reversed(impls))
        for impl in order:
            result = measure(impl)
            runs[impl].append(result)
            text = log(impl, result) if log else json.dumps(result)
            print(f"  repeat {repeat + 1}/{repeats} {IMPL_LABELS.get(impl, impl):>14}: {text}",
                  flush=True)
    return runs


def median_of(runs: Sequence[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in runs)


def against_upstream(runs: dict[str, Sequence[dict[str, Any]]], key: str
                     ) -> list[tuple[str, float, float | None]]:
    """Per variant, in ``runs``' order: ``(variant, median of key, median / the original's
    median)``, the ratio None for the original itself."""
    theirs = median_of(runs["upstream"], key)
    return [(variant, median_of(r, key), None if variant == "upstream"
             else median_of(r, key) / theirs) for variant, r in runs.items()]


def ratio_cell(ratio: float | None) -> str:
    """A table cell for a ratio to the original: bold, empty in the original's own row."""
    return "" if ratio is None else f"**{ratio:.2f}x**"


def fmt_runs(runs: Sequence[dict[str, Any]], key: str, fmt: str = "{:.3f}") -> str:
    return ", ".join(fmt.format(r[key]) for r in runs)


def verdict(ratio: float, target: float, lower_is_better: bool) -> str:
    met = ratio <= target if lower_is_better else ratio >= target
    sign = "<=" if lower_is_better else ">="
    return f"{'meets' if met else 'MISSES'} the {sign} {target:g}x target"


ISA_FLAGS = {  # /proc/cpuinfo flag -> what it gives PyTorch
    "amx_bf16": "AMX-BF16", "amx_tile": "AMX tiles", "avx512_bf16": "AVX-512 BF16",
    "avx512_vnni": "AVX-512 VNNI", "avx512f": "AVX-512F", "avx2": "AVX2",
}


def cpu_flags() -> set[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where it does not exist)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            line = next(ln for ln in f if ln.startswith("flags"))
    except (OSError, StopIteration):
        return set()
    return set(line.split(":", 1)[1].split())


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def cpu_kind() -> str:
    """A short name of the CPU kind, e.g. ``epyc-avx512bf16``: the family word of the model
    name and the best unit for bf16/int8 dot products it has (``amx``, ``avx512bf16``,
    ``vnni``, ``avx2`` or ``basic``). Results of different kinds go to different sections of
    RESULTS.md (``train@epyc-avx512bf16``), because their ratios differ."""
    words = re.findall(r"[a-z0-9]+", cpu_model().lower())
    family = next((w for w in words if w in {"xeon", "epyc", "core", "ryzen", "threadripper",
                                             "graviton", "neoverse"}), words[0] if words else "cpu")
    flags = cpu_flags()
    units = [("amx_bf16", "amx"), ("avx512_bf16", "avx512bf16"), ("avx512_vnni", "vnni"),
             ("avx2", "avx2")]
    unit = next((name for flag, name in units if flag in flags), "basic")
    return f"{family}-{unit}"


def section_name(name: str, device: str = "cpu") -> str:
    """The RESULTS.md section of benchmark ``name``: one per CPU kind (:func:`cpu_kind`), or
    ``name_cuda`` for a GPU run."""
    return f"{name}_{device}" if device != "cpu" else f"{name}@{cpu_kind()}"


def isa_description() -> str:
    """Which of the instruction sets that matter for fp32/bf16 convolutions the CPU has."""
    import torch

    flags = cpu_flags()
    have = [label for flag, label in ISA_FLAGS.items() if flag in flags]
    lacks = [label for flag, label in ISA_FLAGS.items() if flag not in flags]
    amx = "**AMX**" if "amx_bf16" in flags else "**no AMX**"
    text = f"{amx}; has {', '.join(have) or 'none of them'}"
    if lacks:
        text += f"; lacks {', '.join(lacks)}"
    return text + f"; PyTorch CPU capability {torch.backends.cpu.get_cpu_capability()}"


def machine_description(threads: int | Sequence[int] | None = None, device: str = "cpu") -> str:
    """CPU model, instruction sets, core count and library versions (and the GPU for ``device``
    cuda), for the results file."""
    cpu = cpu_model()
    import cv2
    import numpy
    import PIL
    import torch

    text = (f"{cpu} ({isa_description()}), {os.cpu_count()} logical CPUs, "
            f"{platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}, torch {torch.__version__}, "
            f"numpy {numpy.__version__}, opencv {cv2.__version__}, Pillow {PIL.__version__}")
    if device == "cuda":
        text = (f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}, cuDNN "
                f"{torch.backends.cudnn.version()}), host {text}")
    if threads is not None:
        counts = [threads] if isinstance(threads, int) else list(threads)
        text += f"; {' and '.join(map(str, counts))} torch thread(s) per measuring process"
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):
        # a run that emulates an older CPU: oneDNN leaves out the newer instructions
        text += (f"; **oneDNN limited to {os.environ['ONEDNN_MAX_CPU_ISA']}** "
                 "(ONEDNN_MAX_CPU_ISA)")
    try:
        load = os.getloadavg()
        text += (f"; load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} "
                 "(1/5/15 min) at the end")
    except OSError:
        pass
    return text


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def update_results_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Replaces (or appends) the section ``name`` of the results file, atomically.

    The section lies between ``<!-- BEGIN name -->`` and ``<!-- END name -->``; other sections
    are kept byte for byte. A lock file serialises concurrent benchmark scripts.
    """
    sys.path.insert(0, str(REPO_ROOT))
    from mit_semseg.files import atomic_write_text

    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = path.read_text(encoding="utf-8") if path.exists() else RESULTS_HEADER
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
        if pattern.search(old):
            new = pattern.sub(lambda _: block, old, count=1)
        else:
            new = old.rstrip("\n") + "\n\n" + block + "\n"
        atomic_write_text(path, new)


def report(name: str, title: str, args: argparse.Namespace, command: str, lines: Sequence[str]
           ) -> None:
    """Prints the report and writes it to RESULTS.md (unless --no-write), as the section
    :func:`section_name` gives for ``name`` (or ``--section``) on this machine."""
    # (only the comparisons take --section, --device and --threads from add_common_args)
    device = getattr(args, "device", "cpu")
    section = getattr(args, "section", None)
    if section:
        name, command = section, f"{command} --section {section}"
    if device != "cpu":
        title, command = f"{title} on {device}", f"{command} --device {device}"
    name = section_name(name, device)
    body = "\n".join([f"## {title}", "",
                      f"Machine: {machine_description(getattr(args, 'threads', None), device)}.",
                      "",
                      *lines, "", f"Re-run: `{command}`", ""])
    print("\n" + body)
    if not args.no_write:
        update_results_section(name, body)
        print(f"written to section {name} of {RESULTS}")


# ----------------------------------------------------------------------------- worker side
def worker_setup() -> Any:
    """In a measuring process: fix torch's threads from the parent's setting; returns torch."""
    import torch

    threads = int(os.environ.get("BENCH_THREADS", "0"))
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    return torch


def worker_device(job: dict[str, Any]) -> Any:
    """The device a measuring process computes on (``job["device"]``, default CPU); a CUDA
    device becomes the process' current one."""
    import torch

    device = torch.device(job.get("device", "cpu"))
    if device.type == "cuda":
        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
    return device


def synchronize(device: Any) -> None:
    """Wait for ``device`` to finish its queued work (timings of CUDA code need it)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (``ru_maxrss``), MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# glibc otherwise keeps freed large blocks mapped (its mmap threshold grows with use), which
# hides or inflates memory depending on what ran before; with a fixed threshold every large
# tensor is its own mapping, returned on free, so RSS follows the live tensors
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def _status_mib(field: str) -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        line = next(ln for ln in f if ln.startswith(field + ":"))
    return int(line.split()[1]) / 1024.0


def reset_peak_rss() -> float:
    """Restarts the peak-RSS counter (``VmHWM``) at the current RSS, which it returns (MiB).

    Linux only (``/proc/self/clear_refs``); the peak of a later stretch of work is then
    ``peak_rss_since_reset() - reset_peak_rss()``.
    """
    with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
        f.write("5")
    return _status_mib("VmRSS")


def peak_rss_since_reset() -> float:
    """``VmHWM``: the highest RSS since :func:`reset_peak_rss` (or the start), MiB."""
    return _status_mib("VmHWM")


def build_module(impl: str, encoder: str, decoder: str, fc_dim: int, num_class: int,
                 weights: dict[str, str] | None, *, train: bool, factored_heads: bool = True
                 ) -> Any:
    """A ``SegmentationModule`` of whichever ``mit_semseg`` this process imports.

    The original is built from its classes as ``tests/models/upstream_runner.py`` does
    (ModelBuilder would try to download ImageNet weights), with ``use_softmax`` for
    inference and deep supervision (weight 0.4) for ``*_deepsup`` decoders in training, as
    its ``train.py``/``eval.py`` do. ``weights`` = ``{"encoder": path, "decoder": path}``.
    ``factored_heads`` (ours only) is ``TRAIN.factored_heads``.
    """
    import torch
    from torch import nn

    deep_sup = 0.4 if (train and decoder.endswith("deepsup")) else None
    if impl == "ours":
        from mit_semseg.models import build_segmentation_model

        module = build_segmentation_model(encoder, decoder, num_class, fc_dim=fc_dim,
                                          factored_heads=factored_heads)
    else:
        sys.path.append(str(REPO_ROOT / "tests" / "models"))
        from upstream_runner import build_encoder

        from mit_semseg.models import ModelBuilder, SegmentationModule

        net_enc = build_encoder(encoder)
        net_dec = ModelBuilder.build_decoder(decoder, fc_dim, num_class, "", not train)
        module = SegmentationModule(net_enc, net_dec, nn.NLLLoss(ignore_index=-1), deep_sup)
    if weights:
        for part in ("encoder", "decoder"):
            state = torch.load(weights[part], weights_only=True)
            getattr(module, part).load_state_dict(state, strict=True)
    return module.train(train)


def save_weights(module: Any, folder: Path, name: str) -> dict[str, str]:
    """Writes encoder/decoder state dicts of ``module`` for :func:`build_module` to load."""
    import torch

    paths = {part: str(folder / f"{name}_{part}.pth") for part in ("encoder", "decoder")}
    torch.save(module.encoder.state_dict(), paths["encoder"])
    torch.save(module.decoder.state_dict(), paths["decoder"])
    return paths


def worker_main(measure: Callable[[str, dict[str, Any]], dict[str, Any]],
                args: argparse.Namespace) -> bool:
    """If this process is a worker (``--measure``), runs ``measure`` and prints its JSON."""
    if not args.measure:
        return False
    result = measure(args.measure, json.loads(args.job))
    import mit_semseg

    result["module"] = mit_semseg.__file__
    print(json.dumps(result))
    return True
