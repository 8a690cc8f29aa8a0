"""Dataset checker: finds bad samples before a training run trips over them.

Reads every record of an ``.odgt`` list and reports malformed lines, missing or unreadable
files, image/label/list size mismatches and label values above ``num_class``, together with
per-class pixel statistics (share of labelled pixels, number of images containing the class).

Command line (exit status 1 when a problem is found)::

    python -m mit_semseg.data.check data/training.odgt --num-class 150 [--root data/]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mit_semseg.data.odgt import TRAIN_KEYS, OdgtError, check_record
from mit_semseg.data.transforms import ImageReadError, read_label, read_labelled_image

__all__ = ["CheckReport", "check_dataset", "main"]


@dataclass
class CheckReport:
    """Result of :func:`check_dataset`.

    Attributes:
        num_records: well-formed records in the list.
        num_checked: records whose image and label were both read.
        problems: one ``"<file>:<line>: <what>"`` message per problem.
        pixel_counts: ``(num_class + 1,)`` pixel counts per label value (index 0 = unlabeled).
        image_counts: ``(num_class + 1,)`` number of images containing each label value.
        out_of_range: label value -> number of images containing it (values > num_class).
    """

    num_class: int
    num_records: int = 0
    num_checked: int = 0
    problems: list[str] = field(default_factory=list)
    pixel_counts: np.ndarray = None  # type: ignore[assignment]
    image_counts: np.ndarray = None  # type: ignore[assignment]
    out_of_range: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pixel_counts = np.zeros(self.num_class + 1, np.int64)
        self.image_counts = np.zeros(self.num_class + 1, np.int64)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def format(self, class_names: Sequence[str] | None = None, max_problems: int = 50) -> str:
        """Human-readable report: summary, problems, per-class statistics."""
        lines = [f"records: {self.num_records}, read: {self.num_checked}, "
                 f"problems: {len(self.problems)}"]
        for problem in self.problems[:max_problems]:
            lines.append(f"  PROBLEM {problem}")
        if len(self.problems) > max_problems:
            lines.append(f"  ... and {len(self.problems) - max_problems} more")
        if self.out_of_range:
            values = ", ".join(f"{v} ({n} images)" for v, n in sorted(self.out_of_range.items()))
            lines.append(f"label values > num_class {self.num_class}: {values}")
        total = int(self.pixel_counts.sum())
        if total:
            lines.append(f"unlabeled (0): {100 * self.pixel_counts[0] / total:.2f}% of pixels")
            labelled = max(1, total - int(self.pixel_counts[0]))
            lines.append(f"{'class':>5}  {'pixels%':>8}  {'images':>6}  name")
            for c in range(1, self.num_class + 1):
                name = class_names[c - 1] if class_names and c - 1 < len(class_names) else ""
                share = 100 * self.pixel_counts[c] / labelled
                lines.append(f"{c:>5}  {share:>8.3f}  {self.image_counts[c]:>6}  {name}")
            absent = [c for c in range(1, self.num_class + 1) if self.image_counts[c] == 0]
            if absent:
                lines.append(f"classes absent from every image: {absent}")
        return "\n".join(lines)


def _check_one(record: dict, where: str, root: str, report: CheckReport) -> None:
    image_path = os.path.join(root, record["fpath_img"])
    label_path = os.path.join(root, record["fpath_segm"])
    try:
        label = read_label(label_path)
        image = read_labelled_image(image_path, label.shape)  # the datasets' orientation
    except (OSError, ImageReadError) as exc:
        report.problems.append(f"{where}: {exc}")
        return
    height, width = image.shape[:2]
    if label.shape != (height, width):
        report.problems.append(f"{where}: label {label_path} is {label.shape[1]}x"
                               f"{label.shape[0]}, image is {width}x{height}")
    if (record["width"], record["height"]) != (width, height):
        report.problems.append(f"{where}: list says {record['width']}x{record['height']}, "
                               f"image {image_path} is {width}x{height}")
    counts = np.bincount(label.ravel())
    present = np.flatnonzero(counts)
    high = present[present > report.num_class]
    if len(high):
        report.problems.append(f"{where}: {label_path} has label values "
                               f"{high.tolist()} > num_class {report.num_class}")
        for value in high.tolist():
            report.out_of_range[value] = report.out_of_range.get(value, 0) + 1
    counts = counts[: report.num_class + 1]
    report.pixel_counts[: len(counts)] += counts
    report.image_counts[: len(counts)] += counts > 0
    report.num_checked += 1


def check_dataset(odgt: str | os.PathLike, num_class: int,
                  root: str | os.PathLike | None = None) -> CheckReport:
    """Checks every record of ``odgt``; never raises on bad data, reports it instead.

    Args:
        odgt: the list file.
        num_class: number of classes (label values 1..num_class; 0 = unlabeled).
        root: folder the list's paths are relative to (default: the list's folder).
    """
    if num_class < 1:
        raise ValueError(f"num_class must be >= 1, got {num_class}")
    report = CheckReport(num_class=num_class)
    root = str(Path(odgt).parent if root is None else root)
    try:
        with open(odgt, encoding="utf-8") as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as exc:
        report.problems.append(f"{odgt}: cannot read the list ({exc})")
        return report
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{odgt}:{number}"
        try:
            record = check_record(json.loads(line), where, TRAIN_KEYS)
        except json.JSONDecodeError as exc:
            report.problems.append(f"{where}: malformed JSON ({exc.msg})")
            continue
        except OdgtError as exc:
            report.problems.append(str(exc))
            continue
        report.num_records += 1
        _check_one(record, where, root, report)
    if report.num_records == 0:
        report.problems.append(f"{odgt}: no valid record")
    return report


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point; exits with status 1 when problems are found."""
    parser = argparse.ArgumentParser(prog="python -m mit_semseg.data.check",
                                     description="Check an .odgt dataset before training.")
    parser.add_argument("odgt", help="the .odgt list to check")
    parser.add_argument("--num-class", type=int, required=True, help="e.g. 150 for ADE20K")
    parser.add_argument("--root", default=None,
                        help="DATASET.root_dataset (default: the folder of the list)")
    parser.add_argument("--class-info", default=None,
                        help="class table CSV (Idx,Name) for names in the statistics")
    parser.add_argument("--max-problems", type=int, default=50, help="problems listed in full")
    args = parser.parse_args(argv)
    names = None
    if args.class_info:
        from mit_semseg.data.palette import load_class_info

        names = load_class_info(args.class_info)["names"]
    report = check_dataset(args.odgt, args.num_class, args.root)
    sys.stdout.write(report.format(names, args.max_problems) + "\n")
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
