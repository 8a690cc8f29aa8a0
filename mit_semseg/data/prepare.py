"""Your own data in one command: a folder of photos and a folder of masks become a dataset that
``train.py`` takes as it is.

::

    python -m mit_semseg.data.prepare --images photos/ --masks masks/ --out data/mine \\
        [--val-ratio 0.2 | --val-images DIR --val-masks DIR] [--seed 0] \\
        [--mask-format index|colour|binary] [--ignore-index 255] [--classes classes.csv] \\
        [--ignore-colour R,G,B] [--recipe NAME] [--init-from NAME|DIR] [--run-dir DIR] \\
        [--class-weights] [--allow-missing] [KEY VALUE ...]

Images and masks are paired by relative folder and file stem (``photos/a/x.jpg`` with
``masks/a/x.png``); the validation images are a seeded random ``--val-ratio`` of them, or two
folders of their own. Mask conventions (``--mask-format``, default ``index``):

* ``index``: one channel of class values; 0 = unlabeled, 1..K = the classes (ADE20K). With
  ``--ignore-index V`` the classes are 0..K-1 and V is unlabeled (Pascal VOC and Cityscapes
  exports use 255); VOC's palette PNGs are read as their indices.
* ``colour``: RGB masks, one colour per class, given by ``--classes``; a colour of
  ``--ignore-colour`` (repeatable) is unlabeled; any other colour is an error that lists the
  colours found, with their pixel counts and a file holding each.
* ``binary``: one channel, below 128 = background, 128 and above = foreground (so 0/255 masks,
  also anti-aliased or JPEG ones); two classes.

``--classes`` is a CSV with the header ``name,r,g,b``, one class a row in label order (a name
may list synonyms, ``person;people``, which ``MODEL.init_from`` matches against the source
model's classes); ``Idx,Name[,Color]`` tables are read too. Without it the classes are named
``class_<value>`` by their mask value (``background``/``foreground`` for binary masks).

The stored masks follow the package's one convention (0 = unlabeled, 1..K), converted here
once, so every reader (training, evaluation, the checker, the start-up checks, the pictures)
takes them unchanged and a convention can never be half-applied: the ignore value of your
masks becomes 0, which the datasets shift to -1, the loss's ignore index. Images are used
where they are. ``OUT`` (which must not exist, or be empty) receives:

* ``training.odgt``, ``validation.odgt``; ``annotations/{training,validation}/`` (the masks);
* ``object_info.csv``: the class table (``Idx,Name,Color``), which evaluation, ``test.py`` and
  the pictures read for names and colours;
* ``config.yaml``: the recipe ``--recipe`` (a packaged config; with ``--init-from NAME`` of a
  released model, that model's recipe) with the dataset's paths and ``DATASET.num_class``,
  ``DIR`` (``--run-dir``, default ``ckpt/<name of OUT>``), the checkpoints of the recipe's
  last epoch, and the trailing ``KEY VALUE`` overrides; ``python train.py --cfg
  OUT/config.yaml`` trains it. ``--init-from`` sets ``MODEL.init_from`` (fine-tune a released
  model or a run, :mod:`mit_semseg.models.init_from`) and gives the encoder a tenth of the
  decoder's learning rate; ``--class-weights`` writes median-frequency ``TRAIN.class_weights``
  from the training pixel shares.

The dataset checker (:mod:`mit_semseg.data.check`) runs at the end and prints the per-class
pixel shares. Everything is written into a hidden folder beside ``OUT`` that is renamed to
``OUT`` when complete: bad input (a mask of another size, a colour or value the table lacks, an
empty folder, an image without a mask) stops with one line naming the file and the fix, exit
status 2, and leaves nothing behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
from tqdm import tqdm

from mit_semseg.config import get_cfg_defaults, load_config, resolve_config_file
from mit_semseg.data.check import check_dataset, format_weights
from mit_semseg.data.image_io import ImageReadError, read_image, read_label
from mit_semseg.data.odgt import Record, pair_images_with_masks, record_for, write_odgt
from mit_semseg.files import atomic_write_bytes, atomic_write_text
from mit_semseg.models import zoo
from mit_semseg.models.classes import CLASS_TABLE, ade_palette, load_class_info, write_class_table

__all__ = ["DEFAULT_RECIPE", "MASK_FORMATS", "PrepareError", "PrepareOptions", "main", "prepare"]

logger = logging.getLogger(__name__)

MASK_FORMATS = ("index", "colour", "binary")
DEFAULT_RECIPE = "ade20k-resnet50dilated-ppm_deepsup"
BINARY_CLASSES = ("background", "foreground")
BINARY_THRESHOLD = 128
# a fine-tuned encoder learns at this fraction of the decoder's rate (--init-from)
ENCODER_LR_FRACTION = 0.1
SPLITS = ("training", "validation")
# how many unknown colours / values an error lists before "and N more"
_LISTED = 8


class PrepareError(ValueError):
    """The input cannot become a dataset (the message names the file or flag and the fix)."""


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
    """What to prepare (the command line's flags; see the module docstring)."""

    images: Path
    masks: Path
    out: Path
    val_images: Path | None = None
    val_masks: Path | None = None
    val_ratio: float = 0.2
    seed: int = 0
    mask_format: str = "index"
    ignore_index: int | None = None
    classes: Path | None = None
    ignore_colours: tuple[tuple[int, int, int], ...] = ()
    recipe: str | None = None
    init_from: str = ""
    run_dir: Path | None = None
    class_weights: bool = False
    allow_missing: bool = False
    overrides: tuple[str, ...] = ()


# ----------------------------------------------------------------------------- masks
@dataclasses.dataclass
class _Unknown:
    """Pixels of one colour or value that no class stands for, and a file holding it."""

    pixels: int
    example: Path


class MaskConverter:
    """Turns one mask of the chosen convention into the package's (0 = unlabeled, 1..K), and
    collects what no class stands for (colours missing from the table, values beyond it)."""

    def __init__(self, options: PrepareOptions, table: dict[str, Any] | None) -> None:
        self.options = options
        self.num_rows = len(table["names"]) if table is not None else None
        self.unknown: dict[Any, _Unknown] = {}
        self.top = 0  # the highest class value written
        if options.mask_format == "colour":
            colours = table["colors"]
            self.colour_class = {_pack(c): k for k, c in enumerate(colours, start=1)}
            self.colour_class.update({_pack(c): 0 for c in options.ignore_colours})

    def convert(self, path: Path) -> np.ndarray:
        """The mask of ``path`` in the package's convention (uint8, uint16 above 255)."""
        fmt = self.options.mask_format
        if fmt == "colour":
            label = self._from_colours(path)
        else:
            try:
                raw = read_label(path).astype(np.int64)
            except ImageReadError as error:
                if "channels" not in str(error):
                    raise
                raise PrepareError(f"{path}: a colour mask; give --mask-format colour and "
                                   "--classes CSV (name,r,g,b per class)") from None
            if fmt == "binary":
                label = 1 + (raw >= BINARY_THRESHOLD)
            else:
                label = self._from_values(raw, path)
        top = int(label.max(initial=0))
        self.top = max(self.top, top)
        return label.astype(np.uint8 if top <= 255 else np.uint16)

    def _from_values(self, raw: np.ndarray, path: Path) -> np.ndarray:
        ignore = self.options.ignore_index
        label = raw if ignore is None else np.where(raw == ignore, 0, raw + 1)
        if self.num_rows is not None:
            beyond = label > self.num_rows
            if beyond.any():
                values, counts = np.unique(raw[beyond], return_counts=True)
                self._note(values.tolist(), counts.tolist(), path)
                label = np.where(beyond, 0, label)
        return label

    def _from_colours(self, path: Path) -> np.ndarray:
        packed = _pack_image(read_image(path, upright=False))
        colours, inverse, counts = np.unique(packed, return_inverse=True, return_counts=True)
        lookup = np.array([self.colour_class.get(int(c), 0) for c in colours], np.int64)
        missing = [i for i, c in enumerate(colours) if int(c) not in self.colour_class]
        self._note([int(colours[i]) for i in missing], [int(counts[i]) for i in missing], path)
        return lookup[inverse.reshape(packed.shape)]

    def _note(self, keys: list, counts: list, path: Path) -> None:
        for key, count in zip(keys, counts):
            if key in self.unknown:
                self.unknown[key].pixels += int(count)
            else:
                self.unknown[key] = _Unknown(int(count), path)

    def check(self) -> None:
        """Raise when a mask held a colour or value no class stands for (all of them listed)."""
        if not self.unknown:
            return
        ranked = sorted(self.unknown.items(), key=lambda kv: -kv[1].pixels)
        colour = self.options.mask_format == "colour"
        shown = "; ".join(
            f"{_unpack(key) if colour else key} ({found.pixels} px, e.g. {found.example})"
            for key, found in ranked[:_LISTED])
        more = f"; and {len(ranked) - _LISTED} more" if len(ranked) > _LISTED else ""
        table = self.options.classes
        if colour:
            raise PrepareError(
                f"the masks hold {len(ranked)} colour(s) that --classes {table} lacks: "
                f"{shown}{more}; add a row (name,r,g,b) for each class colour, or "
                "--ignore-colour R,G,B for a colour that means unlabeled")
        if self.options.ignore_index is None:  # ADE20K's convention
            values = f"1..{self.num_rows}, 0 = unlabeled"
            hint = ", or give --ignore-index V if your classes start at 0 (V = unlabeled)"
        else:
            values, hint = f"0..{self.num_rows - 1}, {self.options.ignore_index} = unlabeled", ""
        raise PrepareError(
            f"the masks hold {len(ranked)} value(s) beyond the {self.num_rows} classes of "
            f"--classes {table} (values {values}): {shown}{more}; add rows for these "
            f"classes{hint}")


def _pack(rgb: Sequence[int]) -> int:
    return (int(rgb[0]) << 16) | (int(rgb[1]) << 8) | int(rgb[2])


def _pack_image(image: np.ndarray) -> np.ndarray:
    pixels = image.astype(np.int64)
    return (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]


def _unpack(value: int) -> str:
    return f"({value >> 16}, {(value >> 8) & 255}, {value & 255})"


def _encode_png(label: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", label)
    if not ok:
        raise RuntimeError("OpenCV could not encode a PNG mask")
    return buffer.tobytes()


# ----------------------------------------------------------------------------- steps
def _check_options(o: PrepareOptions) -> None:
    if o.mask_format not in MASK_FORMATS:
        raise PrepareError(f"--mask-format must be one of {', '.join(MASK_FORMATS)}, "
                           f"got {o.mask_format!r}")
    if o.mask_format == "colour" and o.classes is None:
        raise PrepareError("--mask-format colour needs --classes CSV (a header name,r,g,b and "
                           "one row per class colour)")
    if o.ignore_index is not None and o.mask_format != "index":
        raise PrepareError(f"--ignore-index applies to --mask-format index, not "
                           f"{o.mask_format}")
    if o.ignore_colours and o.mask_format != "colour":
        raise PrepareError("--ignore-colour applies to --mask-format colour")
    if (o.val_images is None) != (o.val_masks is None):
        raise PrepareError("give both --val-images and --val-masks, or neither (then "
                           "--val-ratio of the images are held out)")
    if o.val_images is None and not 0 < o.val_ratio < 1:
        raise PrepareError(f"--val-ratio must be between 0 and 1, got {o.val_ratio}")
    if len(o.overrides) % 2:
        raise PrepareError(f"config overrides must be KEY VALUE pairs, got {list(o.overrides)}")
    if o.out.exists() and (not o.out.is_dir() or any(o.out.iterdir())):
        raise PrepareError(f"--out {o.out}: exists and is not an empty folder; choose a new "
                           "folder (nothing there is replaced)")


def _read_table(o: PrepareOptions) -> dict[str, Any] | None:
    if o.classes is None:
        return None
    try:
        table = load_class_info(o.classes)
    except (FileNotFoundError, ValueError) as error:
        raise PrepareError(f"--classes {error}") from None
    if o.mask_format == "binary" and len(table["names"]) != 2:
        raise PrepareError(f"--classes {o.classes}: binary masks have 2 classes (background, "
                           f"foreground), the table has {len(table['names'])} rows")
    if o.mask_format == "colour":
        seen: dict[int, str] = {}
        for name, colour in zip(table["names"], table["colors"]):
            other = seen.setdefault(_pack(colour), name)
            if other != name:
                raise PrepareError(f"--classes {o.classes}: {name} and {other} have the same "
                                   f"colour {tuple(int(v) for v in colour)}; give each class "
                                   "its own colour")
    return table


def _split(o: PrepareOptions) -> dict[str, list[tuple[Path, Path, Path]]]:
    """``split -> [(image, mask, mask path relative to its folder)]``."""
    train = [(i, m, m.relative_to(o.masks))
             for i, m in pair_images_with_masks(o.images, o.masks, o.allow_missing)]
    if o.val_images is not None:
        val = [(i, m, m.relative_to(o.val_masks))
               for i, m in pair_images_with_masks(o.val_images, o.val_masks, o.allow_missing)]
        return {"training": train, "validation": val}
    if len(train) < 2:
        raise PrepareError(f"--images {o.images}: {len(train)} image(s) with a mask; a split "
                           "needs 2 or more (or give --val-images and --val-masks)")
    order = np.random.default_rng(o.seed).permutation(len(train))
    num_val = min(len(train) - 1, max(1, round(o.val_ratio * len(train))))
    held_out = set(order[:num_val].tolist())
    return {"training": [p for k, p in enumerate(train) if k not in held_out],
            "validation": [p for k, p in enumerate(train) if k in held_out]}


def _convert_masks(pairs: dict[str, list[tuple[Path, Path, Path]]], converter: MaskConverter,
                   staging: Path) -> dict[str, list[Record]]:
    records: dict[str, list[Record]] = {}
    for split, items in pairs.items():
        records[split] = []
        for image, mask, relative in tqdm(items, desc=split, unit="mask", disable=None):
            label = converter.convert(mask)
            stored = staging / "annotations" / split / relative.with_suffix(".png")
            try:
                record = record_for(image, mask, label.shape, staging, stored)
            except ValueError as error:  # the sizes differ
                raise PrepareError(str(error)) from None
            atomic_write_bytes(stored, _encode_png(label))
            records[split].append(record)
    converter.check()
    return records


def _class_names(o: PrepareOptions, table: dict[str, Any] | None, num_class: int
                 ) -> tuple[list[list[str]], np.ndarray]:
    """Names (synonyms) and colours of the classes, row ``k`` = label value ``k + 1``."""
    palette = ade_palette(num_class)
    if table is not None:
        if table["colors"] is not None:
            palette[:] = table["colors"]
        return [list(s) for s in table["synonyms"]], palette
    if o.mask_format == "binary":
        return [[name] for name in BINARY_CLASSES], palette
    first = 0 if o.ignore_index is not None else 1  # your masks' value of class 1
    return [[f"class_{value}"] for value in range(first, first + num_class)], palette


def _recipe(o: PrepareOptions) -> tuple[Path, list[str]]:
    """The recipe's file and the overrides that make it the released model's, if
    ``--init-from`` names one."""
    release = None
    if o.init_from and not Path(o.init_from).expanduser().is_dir():
        try:
            release = zoo.get_model(o.init_from)
        except KeyError:
            release = None  # a published run: train.py fetches and checks it
    name = o.recipe or (release.config if release is not None else DEFAULT_RECIPE)
    try:
        recipe = resolve_config_file(name)
    except FileNotFoundError as error:
        raise PrepareError(f"--recipe {error}") from None
    if release is None:
        return recipe, []
    return recipe, ["MODEL.arch_encoder", release.arch_encoder, "MODEL.arch_decoder",
                    release.arch_decoder, "MODEL.fc_dim", str(release.fc_dim)]


def _config(o: PrepareOptions, num_class: int, weights: list[float] | None) -> Any:
    """The run's config: recipe, dataset, the choices made here, then the overrides."""
    recipe, arch = _recipe(o)
    out = o.out.resolve()
    run_dir = (o.run_dir or Path("ckpt") / o.out.name).resolve()
    base = [*arch, "DATASET.root_dataset", str(out),
            "DATASET.list_train", str(out / "training.odgt"),
            "DATASET.list_val", str(out / "validation.odgt"),
            "DATASET.num_class", str(num_class), "DIR", str(run_dir),
            "TEST.result", str(run_dir / "pictures")]
    if weights is not None:
        base += ["TRAIN.class_weights", format_weights(weights)]
    overrides = list(o.overrides)
    try:
        first = load_config(recipe, base + overrides)
        derived = ["VAL.checkpoint", f"epoch_{first.TRAIN.num_epoch}.pth",
                   "TEST.checkpoint", f"epoch_{first.TRAIN.num_epoch}.pth"]
        if o.init_from:
            folder = Path(o.init_from).expanduser()
            source = str(folder.resolve()) if folder.is_dir() else o.init_from
            derived += ["MODEL.init_from", source,
                        "TRAIN.lr_encoder", repr(first.TRAIN.lr_decoder * ENCODER_LR_FRACTION)]
        return load_config(recipe, base + derived + overrides)
    except ValueError as error:  # ConfigError: an override names a bad key or value
        raise PrepareError(str(error)) from None


def config_yaml(cfg: Any, header: str) -> str:
    """The keys of ``cfg`` that differ from the defaults, as YAML under a ``#`` header."""
    defaults = get_cfg_defaults()
    tree: dict[str, Any] = {}
    for section, value in cfg.items():
        if not isinstance(value, dict):
            if value != defaults[section]:
                tree[section] = value
            continue
        changed = {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()
                   if v != defaults[section][k]}
        if changed:
            tree[section] = changed
    comments = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comments + yaml.dump(tree, Dumper=_ConfigDumper, sort_keys=False, width=100)


class _ConfigDumper(yaml.SafeDumper):
    """Sections as blocks, sequences inline (``imgSizes: [300, 375]``), as the recipes look."""


_ConfigDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data,
                                                         flow_style=True))


def _header(o: PrepareOptions, argv: Sequence[str] | None) -> str:
    command = " ".join(argv) if argv is not None else " ".join(sys.argv[1:])
    convention = {"index": "index masks, 0 = unlabeled" if o.ignore_index is None
                  else f"index masks, classes from 0, {o.ignore_index} = unlabeled",
                  "colour": "colour masks", "binary": "binary masks"}[o.mask_format]
    return (f"Made by: python -m mit_semseg.data.prepare {command}\n"
            f"Masks: {convention}; stored in OUT/annotations as 0 = unlabeled, 1..N = classes\n"
            "(object_info.csv names them). Train: python train.py --cfg <this file>\n"
            "Keys not listed take their value (and meaning) from "
            "mit_semseg/config/defaults.py.")


def _check(staging: Path, num_class: int, names: list[str]) -> tuple[str, list[float]]:
    """The checker's report of both lists, and the training list's class weights."""
    texts, weights = [], []
    for split in SPLITS:
        report = check_dataset(staging / f"{split}.odgt", num_class, staging)
        if not report.ok:
            raise PrepareError(f"the dataset check failed: {report.summary()}")
        texts.append(f"{split}:\n{report.format(names)}")
        if split == "training":
            weights = report.class_weights()
    return "\n".join(texts), weights


def _publish(staging: Path, out: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp made it private; give it a plain folder's mode
    if out.is_dir():  # empty (checked before any work); a rename cannot replace a folder
        out.rmdir()
    os.rename(staging, out)


def prepare(o: PrepareOptions, argv: Sequence[str] | None = None) -> str:
    """Writes the dataset (see the module docstring); returns the report to print.

    Raises:
        PrepareError: bad input, naming the file or flag and the fix.
        FileNotFoundError: a folder or file does not exist, or an image has no mask.
    """
    _check_options(o)
    table = _read_table(o)
    pairs = _split(o)
    o.out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{o.out.name}.", suffix=".tmp", dir=o.out.parent))
    try:
        converter = MaskConverter(o, table)
        records = _convert_masks(pairs, converter, staging)
        num_class = (len(BINARY_CLASSES) if o.mask_format == "binary"
                     else converter.num_rows or converter.top)
        if num_class == 0:
            raise PrepareError(f"--masks {o.masks}: no labelled pixel in any mask; check "
                               "--mask-format and --ignore-index")
        synonyms, palette = _class_names(o, table, num_class)
        write_class_table(staging / CLASS_TABLE, synonyms, palette)
        for split in SPLITS:
            write_odgt(staging / f"{split}.odgt", records[split])
        report, weights = _check(staging, num_class, [s[0] for s in synonyms])
        cfg = _config(o, num_class, weights if o.class_weights else None)
        atomic_write_text(staging / "config.yaml", config_yaml(cfg, _header(o, argv)))
        _publish(staging, o.out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    sizes = ", ".join(f"{len(records[s])} {s}" for s in SPLITS)
    return (f"{report}\nWrote {o.out}: {sizes} images, {num_class} classes "
            f"({', '.join(s[0] for s in synonyms)}), config.yaml, {CLASS_TABLE}.\n"
            f"Train: python train.py --cfg {o.out / 'config.yaml'}")


# ----------------------------------------------------------------------------- command line
def _colour(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) <= 255 for p in parts):
        raise argparse.ArgumentTypeError(f"expected R,G,B with values 0..255, got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.ArgumentParser, PrepareOptions]:
    parser = argparse.ArgumentParser(
        prog="python -m mit_semseg.data.prepare",
        description="Turn a folder of images and a folder of masks into a dataset with a "
                    "class table and a config that train.py takes as it is (docs/own-data.md).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit status: 0 written; 2 bad input, one line naming the file and the fix, "
               "nothing written")
    parser.add_argument("--images", required=True, type=Path, help="folder of images")
    parser.add_argument("--masks", required=True, type=Path,
                        help="folder of masks, paired with the images by relative path and stem")
    parser.add_argument("--out", required=True, type=Path,
                        help="new folder for the dataset (= DATASET.root_dataset)")
    parser.add_argument("--val-images", type=Path, default=None,
                        help="validation images (default: hold out --val-ratio of --images)")
    parser.add_argument("--val-masks", type=Path, default=None, help="their masks")
    parser.add_argument("--val-ratio", type=float, default=0.2,
                        help="share of the images held out for validation (default: 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of that split (default: 0)")
    parser.add_argument("--mask-format", choices=MASK_FORMATS, default="index",
                        help="index (default: 0 = unlabeled, 1..K), colour (needs --classes) "
                             "or binary (<128 background, >=128 foreground)")
    parser.add_argument("--ignore-index", type=int, default=None, metavar="V",
                        help="index masks whose classes start at 0, V = unlabeled (e.g. 255)")
    parser.add_argument("--classes", type=Path, default=None, metavar="CSV",
                        help="class table: header name,r,g,b, one class a row in label order")
    parser.add_argument("--ignore-colour", type=_colour, action="append", default=[],
                        metavar="R,G,B", help="colour masks: a colour that means unlabeled "
                                              "(repeatable)")
    parser.add_argument("--recipe", default=None, metavar="NAME",
                        help=f"packaged config to base config.yaml on (default: the "
                             f"--init-from model's, else {DEFAULT_RECIPE})")
    parser.add_argument("--init-from", default="", metavar="NAME|DIR",
                        help="fine-tune this released model, run folder or published run "
                             "(MODEL.init_from; the encoder gets a tenth of the decoder's "
                             "learning rate)")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="DIR of the training run (default: ckpt/<name of --out>)")
    parser.add_argument("--class-weights", action="store_true",
                        help="write median-frequency TRAIN.class_weights from the training "
                             "pixel shares (for imbalanced classes)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="leave out images that have no mask instead of stopping")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides written into config.yaml")
    args = parser.parse_args(argv)
    fields = {f.name for f in dataclasses.fields(PrepareOptions)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values["ignore_colours"] = tuple(args.ignore_colour)
    values["overrides"] = tuple(args.overrides)
    return parser, PrepareOptions(**values)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point; exit status 0, or 2 with one line on stderr."""
    parser, options = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        text = prepare(options, argv)
    except (OSError, ValueError) as error:
        message = " ".join(str(error).split())
        parser.exit(2, f"{parser.prog}: error: {message}\n")
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
