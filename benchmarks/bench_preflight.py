"""Start-up check of a training list: header check (``DATASET.preflight headers``, the default)
against the full decode (``DATASET.preflight full``), extrapolated to ADE20K's training list.

Writes a list of ``--records`` ADE-sized samples (683x512 JPEG image, 8-bit PNG label; a few
distinct contents, every file its own copy) to a temporary folder, then times
:func:`mit_semseg.data.check.check_dataset` on all of them with ``full=False`` and on the first
``--full-records`` with ``full=True``. The files were just written, so they are in the page
cache: the numbers are for a warm cache (a cold disk adds its seek time to both checks).

    python benchmarks/bench_preflight.py [--records 3000] [--full-records 300] [--repeats 3]

The table goes to the ``preflight`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common

ADE20K_TRAIN_IMAGES = 20210
WIDTH, HEIGHT = 683, 512
DISTINCT = 8
TARGET_SECONDS = 30.0  # for the whole ADE20K training list


def write_list(root: Path, records: int) -> Path:
    """``records`` samples under ``root``; returns the list."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    contents = []
    for _ in range(DISTINCT):  # smooth scenes with some texture, ADE-like file sizes
        image = cv2.resize(rng.integers(0, 256, (32, 43, 3), np.uint8), (WIDTH, HEIGHT))
        image = cv2.add(image, rng.integers(0, 24, image.shape, np.uint8))
        label = cv2.resize(rng.integers(0, 151, (16, 21), np.uint8), (WIDTH, HEIGHT),
                           interpolation=cv2.INTER_NEAREST)
        contents.append((cv2.imencode(".jpg", image)[1].tobytes(),
                         cv2.imencode(".png", label)[1].tobytes()))
    (root / "images").mkdir()
    (root / "annotations").mkdir()
    lines = []
    for index in range(records):
        jpeg, png = contents[index % DISTINCT]
        (root / "images" / f"{index:06d}.jpg").write_bytes(jpeg)
        (root / "annotations" / f"{index:06d}.png").write_bytes(png)
        lines.append(json.dumps({"fpath_img": f"images/{index:06d}.jpg",
                                 "fpath_segm": f"annotations/{index:06d}.png",
                                 "width": WIDTH, "height": HEIGHT}))
    odgt = root / "training.odgt"
    odgt.write_text("\n".join(lines) + "\n")
    return odgt


def time_check(odgt: Path, full: bool) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds of this process, records checked."""
    from mit_semseg.data.check import check_dataset

    wall, cpu = time.perf_counter(), time.process_time()
    report = check_dataset(odgt, num_class=150, full=full)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if not report.ok:
        raise RuntimeError(report.summary())
    return wall, cpu, report.num_checked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=3000, help="samples in the header run")
    parser.add_argument("--full-records", type=int, default=300,
                        help="samples in the full-decode run (its baseline)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (median)")
    parser.add_argument("--no-write", action="store_true",
                        help="print only, leave benchmarks/RESULTS.md alone")
    args = parser.parse_args()
    sys.path.insert(0, str(common.REPO_ROOT))
    runs: dict[str, list[tuple[float, float, int]]] = {"headers": [], "full": []}
    with tempfile.TemporaryDirectory() as folder:
        odgt = write_list(Path(folder), args.records)
        subset = Path(folder) / "subset.odgt"
        subset.write_text("".join(odgt.read_text().splitlines(True)[: args.full_records]))
        size = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
        for repeat in range(args.repeats):  # alternate, so that load changes hit both alike
            for mode in ("headers", "full") if repeat % 2 == 0 else ("full", "headers"):
                result = time_check(odgt if mode == "headers" else subset, mode == "full")
                runs[mode].append(result)
                print(f"  repeat {repeat + 1}/{args.repeats} {mode:>7}: {result[2]} records, "
                      f"{result[0]:.2f} s wall, {result[1]:.2f} s CPU", flush=True)
    rows, per_record = [], {}
    for mode, results in runs.items():
        wall = statistics.median(r[0] / r[2] for r in results)
        cpu = statistics.median(r[1] / r[2] for r in results)
        per_record[mode] = (wall, cpu)
        rows.append([mode, results[0][2], f"{1000 * wall:.3f}", f"{1000 * cpu:.3f}",
                     f"{ADE20K_TRAIN_IMAGES * wall:.1f}", f"{ADE20K_TRAIN_IMAGES * cpu:.1f}"])
    ratio = per_record["full"][0] / per_record["headers"][0]
    headers_ade = ADE20K_TRAIN_IMAGES * per_record["headers"][0]
    lines = [
        f"{args.records} ADE-sized samples ({WIDTH}x{HEIGHT} JPEG + 8-bit PNG label, "
        f"{size / args.records / 1024:.0f} KiB per sample on disk, warm page cache); "
        f"`check_dataset` with its default 8 threads; median of {args.repeats} runs.",
        "",
        common.markdown_table(["DATASET.preflight", "records timed", "ms / record (wall)",
                               "ms / record (CPU)",
                               f"ADE20K's {ADE20K_TRAIN_IMAGES} images: s (wall)",
                               "ADE20K: s (CPU)"], rows),
        "",
        f"Full decode / header check, per record (wall): **{ratio:.0f}x**. Header check of "
        f"ADE20K's training list, extrapolated: **{headers_ade:.1f} s** "
        f"({'meets' if headers_ade <= TARGET_SECONDS else 'MISSES'} the <= "
        f"{TARGET_SECONDS:g} s target; a cold disk adds two small reads per file).",
    ]
    command = (f"python benchmarks/bench_preflight.py --records {args.records} "
               f"--full-records {args.full_records} --repeats {args.repeats}")
    body = "\n".join(["## Start-up check of the training list (`benchmarks/bench_preflight.py`)",
                      "", f"Machine: {common.machine_description()}.", "", *lines, "",
                      f"Re-run: `{command}`", ""])
    print("\n" + body)
    if not args.no_write:
        section = common.section_name("preflight")
        common.update_results_section(section, body)
        print(f"written to section {section} of {common.RESULTS}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
