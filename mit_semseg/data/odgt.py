"""Reading, writing and building ``.odgt`` sample lists.

An ``.odgt`` file holds one JSON object per line. Training and validation records carry
``fpath_img`` and ``fpath_segm`` (paths relative to ``DATASET.root_dataset``) and the
original ``width`` and ``height`` of the image; test lists only need ``fpath_img``.

Build a list for a custom dataset (images and masks paired by relative path and stem)::

    python -m mit_semseg.data.odgt --images DIR --masks DIR --out FILE [--root ROOT]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mit_semseg.data.image_io import missing_path_message, read_label, read_labelled_image
from mit_semseg.files import atomic_write_text

__all__ = [
    "IMAGE_EXTENSIONS",
    "OdgtError",
    "Record",
    "build_odgt",
    "check_record",
    "find_images",
    "list_images",
    "pair_images_with_masks",
    "read_odgt",
    "record_for",
    "write_odgt",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
TRAIN_KEYS = ("fpath_img", "fpath_segm", "width", "height")
Record = dict[str, Any]


class OdgtError(ValueError):
    """A sample list is empty or one of its lines is malformed (message names file and line)."""


def check_record(record: Any, where: str, required: Sequence[str]) -> Record:
    """Validates one parsed record; ``where`` (e.g. ``"file:line"``) prefixes the error.

    Raises:
        OdgtError: not an object, a missing key, an empty path or a non-positive size.
    """
    if not isinstance(record, dict):
        raise OdgtError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in required if k not in record]
    if missing:
        raise OdgtError(f"{where}: missing key(s) {', '.join(missing)}")
    for key in ("fpath_img", "fpath_segm"):
        if key in record and (not isinstance(record[key], str) or not record[key]):
            raise OdgtError(f"{where}: '{key}' must be a non-empty string, got {record[key]!r}")
    for key in ("width", "height"):
        if key in record:
            value = record[key]
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise OdgtError(f"{where}: '{key}' must be a positive integer, got {value!r}")
    return record


def read_odgt(
    path: str | os.PathLike, required: Sequence[str] = TRAIN_KEYS
) -> tuple[list[Record], list[str]]:
    """Reads and validates an ``.odgt`` file.

    Blank lines are skipped.

    Args:
        path: the list file.
        required: keys every record must have.

    Returns:
        ``(records, origins)``: the records and, for each, ``"<path>:<line>"`` for messages.

    Raises:
        FileNotFoundError: the file does not exist.
        OdgtError: a line is not a JSON object with the required keys, or there is no record.
    """
    records: list[Record] = []
    origins: list[str] = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: sample list not found") from None
    except UnicodeDecodeError as exc:
        raise OdgtError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise OdgtError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        records.append(check_record(record, where, required))
        origins.append(where)
    if not records:
        raise OdgtError(f"{path}: empty sample list (no records)")
    return records, origins


def records_from(
    source: str | os.PathLike | Sequence[Mapping[str, Any]], required: Sequence[str]
) -> tuple[list[Record], list[str]]:
    """Records and origins from an ``.odgt`` path or an in-memory list of dicts."""
    if isinstance(source, (str, os.PathLike)):
        return read_odgt(source, required)
    records = [dict(r) if isinstance(r, Mapping) else r for r in source]
    origins = [f"<list>[{i}]" for i in range(len(records))]
    for record, where in zip(records, origins):
        check_record(record, where, required)
    if not records:
        raise OdgtError("empty sample list (no records)")
    return records, origins


def write_odgt(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> None:
    """Writes records as an ``.odgt`` file (one compact JSON object per line), atomically."""
    text = "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in records)
    atomic_write_text(path, text)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def find_images(folder: str | os.PathLike) -> list[Path]:
    """All image files under ``folder`` (recursive, any common extension, any case), sorted.

    Broken symbolic links with an image extension are kept, so that reading them fails with
    a message naming the link (an image that silently vanished from a run would go unnoticed),
    and they are logged here.
    """
    folder = Path(folder)
    found, broken = [], []
    for path in folder.rglob("*"):
        if not _is_image(path):
            continue
        if path.is_file():
            found.append(path)
        elif path.is_symlink() and not path.exists():
            found.append(path)
            broken.append(path)
    if broken:
        logger.warning("%d broken symbolic link(s) in %s: %s", len(broken), folder,
                       "; ".join(missing_path_message(p) for p in sorted(broken)))
    return sorted(found)


def find_recursive(root_dir: str, ext: str = ".jpg") -> list[str]:
    """All files under ``root_dir`` whose name ends with ``ext``, in a sorted, stable order (the
    original's ``mit_semseg.utils.find_recursive``; :func:`find_images` takes every image type)."""
    found = []
    for folder, _, names in sorted(os.walk(root_dir)):
        found.extend(os.path.join(folder, n) for n in sorted(fnmatch.filter(names, "*" + ext)))
    return found


def _paths_from_list_file(list_file: Path) -> list[Path]:
    if list_file.suffix.lower() == ".odgt":
        records, _ = read_odgt(list_file, required=("fpath_img",))
        entries = [r["fpath_img"] for r in records]
    else:
        entries = [ln.strip() for ln in list_file.read_text(encoding="utf-8").splitlines()]
        entries = [e for e in entries if e and not e.startswith("#")]
    paths = []
    for entry in entries:
        path = Path(entry)
        # relative entries: as given if that exists, else relative to the list file's folder
        if not path.is_absolute() and not path.exists():
            path = list_file.parent / path
        paths.append(path)
    return paths


def list_images(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Expands image files, folders and list files into image paths.

    * an image file is kept as is;
    * a folder contributes all image files below it (recursive, sorted, extensions
      ``IMAGE_EXTENSIONS`` in any case), broken symbolic links included and logged (they
      fail, naming the link, when read);
    * a ``.txt`` file lists one path per line (``#`` comments and blank lines skipped); an
      ``.odgt`` file contributes its ``fpath_img`` entries. Relative entries are taken as
      given when they exist, otherwise relative to the list file's folder.

    Raises:
        FileNotFoundError: a path or listed file does not exist.
        ValueError: nothing found, or a file is neither an image nor a list.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    result: list[str] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found = find_images(path)
            if not found:
                logger.warning("no image files in folder %s", path)
            result.extend(str(p) for p in found)
        elif not path.exists():
            raise FileNotFoundError(missing_path_message(path))
        elif path.suffix.lower() in (".txt", ".odgt", ".lst"):
            for listed in _paths_from_list_file(path):
                if not listed.is_file():
                    raise FileNotFoundError(f"{missing_path_message(listed)} (listed in {path})")
                result.append(str(listed))
        elif _is_image(path):
            result.append(str(path))
        else:
            raise ValueError(
                f"{path}: not an image ({', '.join(IMAGE_EXTENSIONS)}), folder or list file "
                "(.txt/.odgt)"
            )
    if not result:
        raise ValueError(f"no images found in {[str(p) for p in paths]}")
    return result


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def pair_images_with_masks(
    images: str | os.PathLike,
    masks: str | os.PathLike,
    allow_missing: bool = False,
) -> list[tuple[Path, Path]]:
    """``(image, mask)`` pairs: ``images/a/b.jpg`` goes with ``masks/a/b.<ext>`` (same relative
    folder and stem, ``.png`` preferred when a stem has several), in image order.

    Args:
        images: folder of images.
        masks: folder of masks.
        allow_missing: skip images without a mask (logged) instead of raising.

    Raises:
        FileNotFoundError: a folder does not exist, or an image has no mask (naming it and
            the fix).
        ValueError: no image found, or no image has a mask.
    """
    images, masks = Path(images), Path(masks)
    for folder in (images, masks):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: folder not found")
    by_stem: dict[tuple[str, ...], Path] = {}
    for mask in find_images(masks):
        key = mask.relative_to(masks).with_suffix("").parts
        if key not in by_stem or mask.suffix.lower() == ".png":
            by_stem[key] = mask
    image_files = find_images(images)
    if not image_files:
        raise ValueError(f"{images}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in this "
                         "folder or below it")
    pairs, unmasked = [], []
    for image_path in image_files:
        mask_path = by_stem.pop(image_path.relative_to(images).with_suffix("").parts, None)
        if mask_path is None:
            if not allow_missing:
                stem = image_path.relative_to(images).with_suffix("")
                raise FileNotFoundError(
                    f"{image_path}: no mask {masks / stem}.* for this image; add it, remove "
                    "the image, or pass --allow-missing to leave out images without a mask")
            unmasked.append(image_path)
            continue
        pairs.append((image_path, mask_path))
    if unmasked:
        logger.warning("%d image(s) without a mask in %s left out: %s", len(unmasked), masks,
                       ", ".join(str(p) for p in unmasked[:5]) + (", ..." if len(unmasked) > 5
                                                                   else ""))
    if by_stem:
        logger.warning("%d mask(s) without an image in %s ignored, e.g. %s", len(by_stem),
                       images, next(iter(by_stem.values())))
    if not pairs:
        raise ValueError(f"{images}: no image has a mask in {masks}")
    return pairs


def record_for(image_path: Path, mask_path: Path, mask_shape: Sequence[int],
               root: str | os.PathLike, stored_mask: Path | None = None) -> Record:
    """The ``.odgt`` record of an image and its mask, checking that their sizes agree.

    The image is read in the orientation the datasets will use (as stored unless only its
    EXIF-upright form has the mask's size). Paths are relative to ``root`` when below it,
    absolute otherwise.

    Args:
        image_path, mask_path: the pair (``mask_path`` is named in errors).
        mask_shape: ``(H, W)`` of the mask.
        root: the folder ``DATASET.root_dataset`` will be.
        stored_mask: the mask file the record points at, if not ``mask_path`` (a converted
            copy).

    Raises:
        ValueError: the sizes differ (naming both files and the fix).
    """
    height, width = read_labelled_image(image_path, mask_shape).shape[:2]
    if tuple(mask_shape) != (height, width):
        raise ValueError(
            f"{mask_path}: mask is {mask_shape[1]}x{mask_shape[0]} but its image {image_path} "
            f"is {width}x{height}; a mask must have its image's size (export it again at that "
            "size, or resize it with nearest-neighbour interpolation)")
    root = Path(root)
    return {
        "fpath_img": _relative(image_path, root),
        "fpath_segm": _relative(stored_mask or mask_path, root),
        "width": int(width),
        "height": int(height),
    }


def build_odgt(
    images: str | os.PathLike,
    masks: str | os.PathLike,
    root: str | os.PathLike,
    allow_missing: bool = False,
) -> list[Record]:
    """Pairs images with label masks and returns ``.odgt`` records.

    An image ``images/a/b.jpg`` is paired with the mask ``masks/a/b.<ext>`` (same relative
    folder and stem, ``.png`` preferred). Paths are stored relative to ``root`` when they lie
    below it (use ``root`` as ``DATASET.root_dataset``), absolute otherwise. The masks must
    already be label maps in the package's convention; ``python -m mit_semseg.data.prepare``
    converts other conventions (colour masks, 0-based classes with an ignore value, binary).

    Args:
        images: folder of images.
        masks: folder of single-channel label maps (0 = unlabeled, 1..K = classes).
        root: folder the stored paths are relative to.
        allow_missing: skip images without a mask (logged) instead of raising.

    Raises:
        FileNotFoundError: a folder does not exist, or an image has no mask.
        ValueError: no image found, or an image and its mask differ in size.
    """
    return [record_for(image, mask, read_label(mask).shape, root)
            for image, mask in pair_images_with_masks(images, masks, allow_missing)]


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: build an ``.odgt`` list from an image folder and a mask folder."""
    parser = argparse.ArgumentParser(
        prog="python -m mit_semseg.data.odgt",
        description="Build an .odgt sample list from a folder of images and a folder of masks.",
    )
    parser.add_argument("--images", required=True, help="folder of images")
    parser.add_argument("--masks", required=True, help="folder of label maps (same names)")
    parser.add_argument("--out", required=True, help="output .odgt file")
    parser.add_argument("--root", default=None,
                        help="stored paths are relative to this folder (= DATASET.root_dataset); "
                             "default: the folder of --out")
    parser.add_argument("--allow-missing", action="store_true",
                        help="skip images that have no mask instead of failing")
    args = parser.parse_args(argv)
    root = args.root if args.root is not None else str(Path(args.out).resolve().parent)
    try:
        records = build_odgt(args.images, args.masks, root, allow_missing=args.allow_missing)
    except (OSError, ValueError) as exc:
        parser.exit(1, f"error: {exc}\n")
    write_odgt(args.out, records)
    parser.exit(0, f"wrote {len(records)} records to {args.out} (paths relative to {root})\n")


if __name__ == "__main__":
    main()
