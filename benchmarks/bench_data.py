"""Training-batch throughput: our ``TrainDataset`` against the original package's.

Both read the same synthetic files (ADE-like 384..512 px images) with the same ``DATASET``
options, each through a ``DataLoader`` with one worker process (the original's loader setup,
batch size 1 = one device). Every measurement runs in a fresh subprocess; the two
implementations alternate, and the median images/s of several repeats is compared.

    python benchmarks/bench_data.py [--upstream PATH] [--repeats 5] [--steps 40]

The original package (same import name) is looked up in ``--upstream``,
``$MIT_SEMSEG_UPSTREAM`` or ``<repo>/.upstream``; install it with
``pip install --no-deps --target .upstream mit-semseg==1.0.0``.
Results go to ``benchmarks/results/data.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results" / "data.md"
OPTIONS = {
    "imgSizes": (300, 375, 450, 525, 600),
    "imgMaxSize": 1000,
    "padding_constant": 8,
    "segm_downsampling_rate": 8,
    "random_flip": True,
    "num_class": 8,
}
BATCH_PER_GPU = 2
WARMUP_STEPS = 3


def measure(impl: str, root: str, steps: int) -> dict:
    """Runs inside the subprocess: images/s of ``steps`` per-device batches after warm-up."""
    import torch
    from yacs.config import CfgNode

    import mit_semseg
    from mit_semseg.dataset import TrainDataset

    opt = CfgNode(dict(OPTIONS))
    odgt = os.path.join(root, "training.odgt")
    if impl == "ours":
        from mit_semseg.data import build_train_loader

        dataset = TrainDataset(root, odgt, opt, batch_per_gpu=BATCH_PER_GPU, seed=0)
        loader = build_train_loader(dataset, num_devices=1, workers=1, seed=0)
    else:
        from mit_semseg.lib.nn import user_scattered_collate

        dataset = TrainDataset(root, odgt, opt, batch_per_gpu=BATCH_PER_GPU)
        loader = torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False,
                                             collate_fn=user_scattered_collate, num_workers=1,
                                             drop_last=True)
    iterator = iter(loader)
    for _ in range(WARMUP_STEPS):
        next(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(iterator)
        assert batch[0]["img_data"].shape[0] == BATCH_PER_GPU
    seconds = time.perf_counter() - start
    return {"impl": impl, "images_per_s": steps * BATCH_PER_GPU / seconds,
            "module": mit_semseg.__file__}


def _find_upstream(explicit: str | None) -> Path | None:
    candidates = [explicit, os.environ.get("MIT_SEMSEG_UPSTREAM"), str(REPO_ROOT / ".upstream")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "mit_semseg" / "dataset.py").is_file():
            return Path(candidate)
    return None


def _run(impl: str, pythonpath: Path, root: str, steps: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(pythonpath), OMP_NUM_THREADS="1")
    cmd = [sys.executable, __file__, "--measure", impl, "--root", root, "--steps", str(steps)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, cwd=root)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import cv2
    import numpy
    import PIL
    import torch

    return (f"{cpu}, {os.cpu_count()} logical CPUs; Python {platform.python_version()}, "
            f"torch {torch.__version__}, numpy {numpy.__version__}, "
            f"opencv {cv2.__version__}, Pillow {PIL.__version__}")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", default=None, help="folder holding the original package")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40, help="batches timed per run")
    parser.add_argument("--images", type=int, default=64, help="synthetic training images")
    parser.add_argument("--measure", choices=["ours", "upstream"], help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.root, args.steps)))
        return

    upstream = _find_upstream(args.upstream)
    if upstream is None:
        sys.exit("bench_data: the original mit_semseg 1.0.0 was not found (pass --upstream or "
                 "install it: pip install --no-deps --target .upstream mit-semseg==1.0.0)")
    sys.path.insert(0, str(REPO_ROOT))
    from mit_semseg.data.synthetic import generate

    with tempfile.TemporaryDirectory() as root:
        generate(root, num_train=args.images, num_val=1, seed=0, min_size=384, max_size=512)
        speeds: dict[str, list[float]] = {"ours": [], "upstream": []}
        for repeat in range(args.repeats):
            for impl, path in (("ours", REPO_ROOT), ("upstream", upstream)):
                result = _run(impl, path, root, args.steps)
                expected = (REPO_ROOT if impl == "ours" else upstream).resolve()
                if not Path(result["module"]).resolve().is_relative_to(expected):
                    sys.exit(f"bench_data: {impl} imported {result['module']}, not {expected}")
                speeds[impl].append(result["images_per_s"])
                print(f"repeat {repeat + 1}/{args.repeats} {impl:>8}: "
                      f"{result['images_per_s']:.1f} images/s", flush=True)
    ours, theirs = statistics.median(speeds["ours"]), statistics.median(speeds["upstream"])
    ratio = ours / theirs
    verdict = "meets" if ratio >= 1.5 else "misses"
    print(f"median: ours {ours:.1f} images/s, original {theirs:.1f} images/s, "
          f"ratio {ratio:.2f}x ({verdict} the 1.5x target)")
    opts = ", ".join(f"{k}={v}" for k, v in OPTIONS.items())
    _write_atomic(RESULTS, "\n".join([
        "# Data loading benchmark (`benchmarks/bench_data.py`)",
        "",
        f"Machine: {_machine()}.",
        "",
        f"Training batches of {BATCH_PER_GPU} images from {args.images} synthetic JPEGs of "
        f"384..512 px, DATASET options {opts}; one DataLoader worker per run, "
        f"{args.steps} batches timed after {WARMUP_STEPS} warm-up batches, "
        f"{args.repeats} alternating repeats, each in a fresh process.",
        "",
        "| implementation | median images/s | runs |",
        "|---|---|---|",
        f"| ours (OpenCV) | {ours:.1f} | {', '.join(f'{s:.1f}' for s in speeds['ours'])} |",
        f"| original 1.0.0 (PIL) | {theirs:.1f} | "
        f"{', '.join(f'{s:.1f}' for s in speeds['upstream'])} |",
        "",
        f"Ratio: **{ratio:.2f}x** ({verdict} the 1.5x target).",
        "",
        f"Command: `python benchmarks/bench_data.py --repeats {args.repeats} "
        f"--steps {args.steps} --images {args.images}`",
        "",
    ]))


if __name__ == "__main__":
    main()
