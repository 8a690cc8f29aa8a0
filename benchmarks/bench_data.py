"""Training-batch throughput: our ``TrainDataset`` against the original package's.

Both read the same synthetic files (ADE-like 384..512 px images) with the same ``DATASET``
options, each through a ``DataLoader`` with one worker process (the original's loader setup,
batch size 1 = one device). Every measurement runs in a fresh subprocess; the two
implementations alternate, and the median images/s of several repeats is compared.

    python benchmarks/bench_data.py [--upstream PATH] [--repeats 5] [--steps 40] [--threads 1]

The original package (same import name) is found as ``common.py`` describes. The table goes
to the ``data`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import common

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
TARGET = 1.5  # ours / original images per second


def measure(impl: str, job: dict) -> dict:
    """Runs inside the subprocess: images/s of ``steps`` per-device batches after warm-up."""
    torch = common.worker_setup()
    from yacs.config import CfgNode

    from mit_semseg.dataset import TrainDataset

    root, steps = job["root"], job["steps"]
    opt = CfgNode(dict(OPTIONS))
    odgt = os.path.join(root, "training.odgt")
    if impl == "ours":
        from mit_semseg.data import build_train_loader

        dataset = TrainDataset(root, odgt, opt, batch_per_gpu=BATCH_PER_GPU, seed=0)
        loader = build_train_loader(dataset, num_devices=1, workers=1, seed=0)
    else:
        from mit_semseg.data.loader import user_scattered_collate

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
    return {"images_per_s": steps * BATCH_PER_GPU / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser, repeats=5, threads=1)
    parser.add_argument("--steps", type=int, default=40, help="batches timed per run")
    parser.add_argument("--images", type=int, default=64, help="synthetic training images")
    args = parser.parse_args()
    if common.worker_main(measure, args):
        return
    upstream = common.prepare_parent(args)
    from mit_semseg.data.synthetic import generate

    with tempfile.TemporaryDirectory() as root:
        generate(root, num_train=args.images, num_val=1, seed=0, min_size=384, max_size=512)
        job = {"root": root, "steps": args.steps}
        runs = common.alternate(
            args.repeats, lambda impl: common.run_worker(__file__, impl, upstream, job,
                                                         args.threads),
            log=lambda impl, r: f"{r['images_per_s']:.1f} images/s")
    ours = common.median_of(runs["ours"], "images_per_s")
    theirs = common.median_of(runs["upstream"], "images_per_s")
    ratio = ours / theirs
    opts = ", ".join(f"{k}={v}" for k, v in OPTIONS.items())
    rows = [["ours (OpenCV decoding, Pillow resizing)", f"{ours:.1f}",
             common.fmt_runs(runs["ours"], "images_per_s", "{:.1f}")],
            ["original 1.0.0 (PIL)", f"{theirs:.1f}",
             common.fmt_runs(runs["upstream"], "images_per_s", "{:.1f}")]]
    command = (f"python benchmarks/bench_data.py --repeats {args.repeats} --steps {args.steps} "
               f"--images {args.images} --threads {args.threads}")
    common.report("data", "Data loading (`benchmarks/bench_data.py`)", args, command, [
        f"Training batches of {BATCH_PER_GPU} images from {args.images} synthetic JPEGs of "
        f"384..512 px, DATASET options {opts}; one DataLoader worker per run, "
        f"{args.steps} batches timed after {WARMUP_STEPS} warm-up batches, "
        f"{args.repeats} alternating repeats, each in a fresh process.",
        "",
        common.markdown_table(["implementation", "median images/s", "runs"], rows),
        "",
        f"Ratio: **{ratio:.2f}x** ({common.verdict(ratio, TARGET, lower_is_better=False)}).",
    ])


if __name__ == "__main__":
    main()
