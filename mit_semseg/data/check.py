"""Dataset checker: finds bad samples before a training run trips over them.

Reads every record of an ``.odgt`` list and reports malformed lines, missing or unreadable
files, image/label/list size mismatches and label values above ``num_class``, together with
per-class pixel statistics (share of labelled pixels, number of images containing the class).

Two depths:

* full (the default here): every image and label is decoded, so corrupt pixel data and label
  values above ``num_class`` are found, and the class statistics are computed;
* headers only (``full=False``, what the scripts run before every training and evaluation,
  ``DATASET.preflight``): each file's header is read with Pillow's lazy ``Image.open`` and
  its last bytes are checked for the end marker of a JPEG or PNG, so missing, unreadable,
  truncated and mis-sized files and colour label maps are found without decoding a pixel.

Both depths refuse, from the header, a file of more pixels than ``max_pixels``
(``DATASET.max_image_pixels``; a decompression bomb), naming its list line and size.

Command line (exit status 1 when a problem is found)::

    python -m mit_semseg.data.check data/training.odgt --num-class 150 [--root data/] \\
        [--headers-only] [--max-image-pixels N] [--class-info data/object_info.csv]
        [--class-weights]

``--class-weights`` also prints loss weights for imbalanced data (``TRAIN.class_weights``,
:meth:`CheckReport.class_weights`) computed from the pixel shares.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mit_semseg.data.image_io import (
    _JPEG_EOI,
    _JPEG_TRAILER_SLACK,
    MAX_IMAGE_PIXELS,
    ImageReadError,
    ImageTooLargeError,
    check_image_size,
    read_image,
    read_label,
    read_labelled_image,
)
from mit_semseg.data.odgt import TRAIN_KEYS, OdgtError, check_record
from mit_semseg.models.classes import load_class_info

__all__ = ["CheckReport", "check_dataset", "format_weights", "main", "read_header"]

# a class rarer than this many times the median share weighs no more than that many times more
MAX_CLASS_WEIGHT = 10.0

_PNG_IEND = b"IEND"
_EXIF_ORIENTATION = 0x0112
# orientations whose upright picture is the stored one transposed (rotated by 90 degrees)
_TRANSPOSED = (5, 6, 7, 8)
# Pillow modes that read_label accepts: one channel of class indices (8/16 bit, or a palette)
_LABEL_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L")


@dataclass
class CheckReport:
    """Result of :func:`check_dataset`.

    Attributes:
        num_lines: non-blank lines of the list.
        num_records: well-formed records in the list.
        num_checked: records whose image and label were both read.
        num_bad: lines with at least one problem (malformed lines included).
        problems: one ``"<file>:<line>: <what>"`` message per problem.
        pixel_counts: ``(num_class + 1,)`` pixel counts per label value (index 0 = unlabeled);
            full checks only.
        image_counts: ``(num_class + 1,)`` number of images containing each label value.
        out_of_range: label value -> number of images containing it (values > num_class).
    """

    num_class: int
    num_lines: int = 0
    num_records: int = 0
    num_checked: int = 0
    num_bad: int = 0
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

    def class_weights(self, cap: float = MAX_CLASS_WEIGHT) -> list[float]:
        """Loss weights from the pixel shares (``TRAIN.class_weights``), one per class.

        Median-frequency balancing (Eigen and Fergus, ICCV 2015): class ``c`` weighs
        ``median share / share of c``, the median taken over the classes present, so a class
        of median frequency weighs 1, rarer ones more and common ones less; capped at ``cap``
        so that a class of a few pixels cannot dominate the loss. Classes absent from every
        image weigh 1 (they add nothing to the loss anyway). Needs a full check.

        Raises:
            ValueError: no labelled pixel was counted (a headers-only check, or no label).
        """
        counts = self.pixel_counts[1:].astype(np.float64)
        if counts.sum() == 0:
            raise ValueError("class weights need the pixel counts of a full check with at "
                             "least one labelled pixel")
        shares = counts / counts.sum()
        median = float(np.median(shares[shares > 0]))
        with np.errstate(divide="ignore"):
            weights = np.where(shares > 0, median / shares, 1.0)
        return [round(float(w), 4) for w in np.minimum(weights, cap)]

    def summary(self, max_problems: int = 3) -> str:
        """The problems in one line: how many lines are bad and the first ``max_problems``."""
        shown = "; ".join(self.problems[:max_problems])
        more = len(self.problems) - max_problems
        return (f"{self.num_bad} of {self.num_lines} line(s) bad: {shown}"
                + (f"; and {more} more problem(s)" if more > 0 else ""))

    def format(self, class_names: Sequence[str] | None = None, max_problems: int = 50) -> str:
        """Human-readable report: summary, problems, per-class statistics."""
        lines = [f"records: {self.num_records}, read: {self.num_checked}, "
                 f"bad lines: {self.num_bad}, problems: {len(self.problems)}"]
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


def format_weights(weights: Sequence[float]) -> str:
    """``TRAIN.class_weights`` as a config value: ``(1.5, 0.25)``, ``(2,)`` for one class."""
    return "(" + ", ".join(f"{w:g}" for w in weights) + ("," if len(weights) == 1 else "") + ")"


class _UnreadableHeader(ImageReadError):
    """Pillow cannot identify the file (OpenCV may still decode it)."""


def read_header(path: str | os.PathLike, upright: bool = True,
                max_pixels: int | None = MAX_IMAGE_PIXELS) -> tuple[int, int, str]:
    """``(width, height, Pillow mode)`` of an image file, from its header alone.

    Besides the header, only the file's last bytes are read: a JPEG or PNG cut short (an
    interrupted copy or download) lacks its end marker.

    Args:
        path: the file.
        upright: the size once the EXIF orientation is applied (images are read upright;
            labels, False, are read as stored).
        max_pixels: refuse a file of more pixels (None: no limit).

    Raises:
        FileNotFoundError: the file does not exist.
        ImageReadError: not an image Pillow can identify, or a truncated JPEG/PNG.
        ImageTooLargeError: more than ``max_pixels`` pixels, or than Pillow's own limit.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            check_image_size(f, path, max_pixels)
            f.seek(0)
            try:
                with Image.open(f) as image:
                    width, height = image.size
                    mode, kind = image.mode, image.format
                    if upright and image.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSED:
                        width, height = height, width
            except Image.DecompressionBombError as exc:  # max_pixels above Pillow's limit
                raise ImageTooLargeError(f"{path}: too many pixels for Pillow ({exc})"
                                         ) from None
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                raise _UnreadableHeader(f"{path}: cannot read the image header ({exc})"
                                        ) from None
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _JPEG_TRAILER_SLACK))
            tail = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageReadError(f"{path}: is a directory, expected an image file") from None
    if (kind == "JPEG" and _JPEG_EOI not in tail) or (kind == "PNG" and _PNG_IEND not in tail):
        raise ImageReadError(f"{path}: truncated {kind} (no end marker)")
    return width, height, mode


def _header_or_decoded(path: str, read_pixels, max_pixels: int | None,
                       upright: bool = False) -> tuple[int, int, str]:
    """The header of ``path`` (sizes as stored, or of the EXIF-upright picture); a file whose
    header Pillow cannot read is decoded with ``read_pixels`` (OpenCV reads a few formats
    Pillow does not), which raises if it fails."""
    try:
        return read_header(path, upright, max_pixels)
    except _UnreadableHeader:
        pixels = read_pixels(path, max_pixels=max_pixels)
    return pixels.shape[1], pixels.shape[0], "L" if pixels.ndim == 2 else "RGB"


@dataclass
class _Sample:
    """One well-formed record and the result of checking its files."""

    record: dict
    where: str
    paths: tuple[str, str]
    max_pixels: int | None = MAX_IMAGE_PIXELS
    read: bool = False  # both files could be read
    problems: list[str] = field(default_factory=list)
    label_counts: np.ndarray | None = None  # full checks: pixels per label value


def _check_sizes(sample: _Sample, image_size: tuple[int, int],
                 label_size: tuple[int, int]) -> None:
    """Image vs label vs list sizes, each ``(width, height)``."""
    (image_path, label_path), where, record = sample.paths, sample.where, sample.record
    width, height = image_size
    if label_size != image_size:
        sample.problems.append(f"{where}: label {label_path} is {label_size[0]}x"
                               f"{label_size[1]}, image is {width}x{height}")
    if (record["width"], record["height"]) != image_size:
        sample.problems.append(f"{where}: list says {record['width']}x{record['height']}, "
                               f"image {image_path} is {width}x{height}")


def _check_headers(sample: _Sample) -> _Sample:
    image_path, label_path = sample.paths
    limit = sample.max_pixels
    try:
        width, height, _ = _header_or_decoded(image_path, read_image, limit)
        label_width, label_height, mode = _header_or_decoded(label_path, read_label, limit)
        if (width, height) != (label_width, label_height):
            # the datasets' rule (read_labelled_image): the EXIF-upright picture when only it
            # has the label's size
            upright = _header_or_decoded(image_path, read_image, limit, upright=True)[:2]
            if upright == (label_width, label_height):
                width, height = upright
    except (OSError, ImageReadError) as exc:
        sample.problems.append(f"{sample.where}: {exc}")
        return sample
    sample.read = True
    if mode not in _LABEL_MODES:
        sample.problems.append(
            f"{sample.where}: label {label_path} has mode {mode}; label maps must be "
            "single-channel class indices (convert colour-coded masks to indices first)")
    _check_sizes(sample, (width, height), (label_width, label_height))
    return sample


def _check_pixels(sample: _Sample) -> _Sample:
    image_path, label_path = sample.paths
    try:
        label = read_label(label_path, sample.max_pixels)
        # the datasets' orientation
        image = read_labelled_image(image_path, label.shape, sample.max_pixels)
    except (OSError, ImageReadError) as exc:
        sample.problems.append(f"{sample.where}: {exc}")
        return sample
    sample.read = True
    height, width = image.shape[:2]
    _check_sizes(sample, (width, height), (label.shape[1], label.shape[0]))
    sample.label_counts = np.bincount(label.ravel())
    return sample


def _add(report: CheckReport, sample: _Sample) -> None:
    """Adds one checked record to the report (label values above num_class are found here)."""
    counts = sample.label_counts
    if counts is not None:
        present = np.flatnonzero(counts)
        high = present[present > report.num_class].tolist()
        if high:
            sample.problems.append(f"{sample.where}: {sample.paths[1]} has label values "
                                   f"{high} > num_class {report.num_class}")
            for value in high:
                report.out_of_range[value] = report.out_of_range.get(value, 0) + 1
        counts = counts[: report.num_class + 1]
        report.pixel_counts[: len(counts)] += counts
        report.image_counts[: len(counts)] += counts > 0
    report.num_checked += sample.read
    report.num_bad += bool(sample.problems)
    report.problems.extend(sample.problems)


def check_dataset(odgt: str | os.PathLike, num_class: int,
                  root: str | os.PathLike | None = None, *, full: bool = True,
                  threads: int = 8, max_pixels: int | None = MAX_IMAGE_PIXELS) -> CheckReport:
    """Checks every record of ``odgt``; never raises on bad data, reports it instead.

    Args:
        odgt: the list file.
        num_class: number of classes (label values 1..num_class; 0 = unlabeled).
        root: folder the list's paths are relative to (default: the list's folder).
        full: decode every image and label (pixel data, label values, class statistics);
            False reads only the file headers (see the module docstring), tens of times
            faster (benchmarks/bench_preflight.py).
        threads: files are read by this many threads (waiting for a disk or a network
            folder, and decoding, release the GIL); problems are reported in list order.
        max_pixels: a file whose header declares more pixels is a problem, found without
            decoding it (None: no limit).
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
    # each line is either a problem (malformed) or a sample whose files are checked
    entries: list[str | _Sample] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{odgt}:{number}"
        try:
            record = check_record(json.loads(line), where, TRAIN_KEYS)
        except json.JSONDecodeError as exc:
            entries.append(f"{where}: malformed JSON ({exc.msg})")
            continue
        except OdgtError as exc:
            entries.append(str(exc))
            continue
        entries.append(_Sample(record, where, (os.path.join(root, record["fpath_img"]),
                                               os.path.join(root, record["fpath_segm"])),
                               max_pixels))
    samples = [e for e in entries if isinstance(e, _Sample)]
    report.num_lines, report.num_records = len(entries), len(samples)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        checked = iter(pool.map(_check_pixels if full else _check_headers, samples))
        for entry in entries:
            if isinstance(entry, str):
                report.problems.append(entry)
                report.num_bad += 1
            else:
                _add(report, next(checked))
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
    parser.add_argument("--headers-only", action="store_true",
                        help="read file headers instead of decoding every image and label "
                             "(fast; no label values or class statistics)")
    parser.add_argument("--max-image-pixels", type=int, default=MAX_IMAGE_PIXELS, metavar="N",
                        help="files whose header declares more pixels are reported, not "
                             "decoded (DATASET.max_image_pixels; default: %(default)s)")
    parser.add_argument("--class-weights", action="store_true",
                        help="also print median-frequency loss weights from the pixel shares, "
                             "as a TRAIN.class_weights override")
    args = parser.parse_args(argv)
    if args.max_image_pixels < 1:
        parser.error(f"--max-image-pixels must be >= 1, got {args.max_image_pixels}")
    if args.class_weights and args.headers_only:
        parser.error("--class-weights needs the pixel counts: drop --headers-only")
    names = None
    if args.class_info:
        names = load_class_info(args.class_info)["names"]
    report = check_dataset(args.odgt, args.num_class, args.root, full=not args.headers_only,
                           max_pixels=args.max_image_pixels)
    sys.stdout.write(report.format(names, args.max_problems) + "\n")
    if args.class_weights and report.pixel_counts[1:].sum() > 0:
        sys.stdout.write(f'TRAIN.class_weights "{format_weights(report.class_weights())}"\n')
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
