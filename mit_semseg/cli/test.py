"""Segment images with a trained model and save pictures of the predictions (``test.py``).

Example::

    python test.py --imgs photo.jpg more_photos/ list.txt \\
        --cfg ade20k-resnet50dilated-ppm_deepsup --gpus cpu \\
        DIR ckpt/ade20k-resnet50dilated-ppm_deepsup TEST.result out/ TEST.save_label True

``--imgs`` takes image files, folders (searched recursively for all common image extensions)
and list files (``.txt``/``.lst``/``.odgt``: one path or ``{"fpath_img": ...}`` record per line,
relative to the list's folder). For every image ``TEST.result/<name>.png`` shows
``[input | colourised prediction | legend of the main classes with pixel shares]``; with
``TEST.save_label True`` the raw prediction is also saved as ``TEST.result/labels/<name>.png``
(value = class index + 1 as in ADE20K annotations; uint8, or uint16 above 255 classes).
``<name>`` is the image's path relative to the inputs' common folder, ``/`` replaced by ``__``.

``--model NAME`` runs a released model instead (downloaded into the cache on first use); so
does a plain ``python test.py --imgs photo.jpg`` when the config is a packaged recipe whose
``DIR`` holds no weights: the released model of that architecture, with a warning
(:mod:`mit_semseg.cli.model_setup`).

With one scale in ``DATASET.imgSizes`` (and no window cutting the image), a module prepared for
fast inference (``MODEL.fast_inference True``, or ``MODEL.backend onnxruntime``) predicts the
argmax of the upsampled class scores, without softmax or any full-size float map
(:func:`mit_semseg.inference.predict.predict_labels`); the plain module keeps the original's
arithmetic.

Grayscale, RGBA, 16-bit and tiny images are converted; unreadable files (missing, empty,
corrupt, or of more pixels than ``DATASET.max_image_pixels``, found from the header) are
reported by name and skipped. Before building the model it checks the weight
files and that ``TEST.result`` is writable (:mod:`mit_semseg.cli.preflight`). Exit status: 0 if
every image was processed, 1 if some could not be, 2 on a setup error (bad config, missing or
unfitting checkpoint, download failed, unwritable output folder, no input images).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mit_semseg.cli import common, model_setup
from mit_semseg.cli.devices import bind_cuda_device
from mit_semseg.data.datasets import TestDataset
from mit_semseg.data.image_io import ImageReadError, label_file_array
from mit_semseg.data.odgt import list_images
from mit_semseg.data.palette import dataset_classes
from mit_semseg.inference.predict import PredictOptions, predict_labels, window_from
from mit_semseg.nn.precision import check_amp
from mit_semseg.viz import class_fractions, prediction_panel, save_image

PROG = "test.py"
logger = logging.getLogger("test")


EXAMPLES = (
    "{prog} --imgs photo.jpg   # the released ade20k-resnet50dilated-ppm_deepsup if DIR is empty",
    "{prog} --imgs photo.jpg --model ade20k-hrnetv2-c1 --gpus cpu TEST.result out/",
    "{prog} --imgs photo.jpg --cfg ade20k-resnet50dilated-ppm_deepsup --gpus cpu "
    "DIR ckpt/my_run TEST.result out/",
    "{prog} --imgs holiday/ list.txt --cfg my_config.yaml --gpu 0 TEST.save_label True",
    "{prog} --imgs big.jpg --cfg config/ade20k-hrnetv2.yaml TEST.window_size 600",
)


def parse_args(argv: list[str] | None = None, prog: str = PROG) -> argparse.Namespace:
    parser = common.script_parser(
        prog, "Segment images with a trained model (DIR/{encoder,decoder}_<TEST.checkpoint>)\n"
        "and write one picture per image (input, prediction, legend) to TEST.result.",
        devices_help='one device: a GPU index such as 0, or "cpu"', examples=EXAMPLES,
        released_models=True)
    parser.add_argument("--imgs", required=True, nargs="+", metavar="PATH",
                        help="images, folders (searched recursively) or list files "
                             "(.txt/.lst/.odgt); required")
    return parser.parse_args(argv)


@dataclass(frozen=True)
class _Outputs:
    """Where and how the pictures (and label maps) of one run are written."""

    result_dir: Path
    palette: np.ndarray
    class_names: list[str]
    save_label: bool

    def write(self, name: str, image: np.ndarray, pred: np.ndarray,
              inputs: set[Path]) -> Path:
        out_path = self.result_dir / f"{name}.png"
        if out_path.resolve() in inputs:  # never overwrite an input image
            out_path = self.result_dir / f"{name}_seg.png"
        save_image(out_path, prediction_panel(image, pred, self.palette, self.class_names))
        if self.save_label:
            save_image(self.result_dir / "labels" / f"{name}.png",
                       label_file_array(pred, len(self.class_names)))
        return out_path


def collect_images(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Expands ``--imgs`` arguments (files, folders, list files) into image paths.

    Each argument is expanded with :func:`mit_semseg.data.list_images`; an argument that
    cannot be used (missing path, empty folder, unknown file type) is reported instead of
    stopping the others.

    Returns:
        ``(images, problems)``: the images in order without duplicates, and one message per
        unusable argument.
    """
    images: list[Path] = []
    problems: list[str] = []
    seen: set[Path] = set()
    for item in inputs:
        try:
            found = list_images(item)
        except (FileNotFoundError, ValueError) as exc:
            problems.append(str(exc))
            continue
        for path in map(Path, found):
            if path.resolve() not in seen:
                seen.add(path.resolve())
                images.append(path)
    return images, problems


def output_names(images: Sequence[Path]) -> list[str]:
    """Unique output stems for images, readable and stable.

    The stem is the path relative to the images' common folder with separators turned into
    ``__`` (``a/x.jpg`` and ``b/x.jpg`` give ``a__x`` and ``b__x``; a single folder gives plain
    file stems). Files differing only by extension keep it (``x_jpg``, ``x_png``).
    """
    if not images:
        return []
    resolved = [p.resolve() for p in images]
    base = Path(os.path.commonpath([p.parent for p in resolved]))
    rel = [p.relative_to(base) for p in resolved]
    stems = ["__".join(r.with_suffix("").parts) for r in rel]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    names = [
        f"{stem}_{r.suffix[1:]}" if counts[stem] > 1 else stem for r, stem in zip(rel, stems)
    ]
    # last resort for pathological names (e.g. "x_jpg.png" next to "x.jpg" and "x.png")
    taken: set[str] = set()
    for i, name in enumerate(names):
        candidate, n = name, 2
        while candidate in taken:
            candidate, n = f"{name}_{n}", n + 1
        taken.add(candidate)
        names[i] = candidate
    return names


def _poisons_device(exc: BaseException) -> bool:
    """A CUDA error (device-side assert, illegal address...) after which this process' CUDA
    context is unusable: every later CUDA call would fail with it too. Running out of memory
    is not one."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return False
    return isinstance(exc, getattr(torch, "AcceleratorError", ())) or (
        isinstance(exc, RuntimeError) and "CUDA error" in str(exc))


def _segment_all(cfg: Any, module: nn.Module, device: torch.device, images: list[Path],
                 weights_dir: str | Path) -> int:
    """Predict and write every image; return how many failed (each is logged by name).

    Classes are named and coloured by the table of the model's folder ``weights_dir`` (a
    training run's), else of ``DATASET.root_dataset``, else ADE20K's.

    An image that fails is skipped, except after a CUDA error that leaves the device unusable:
    then the remaining images are not attempted (they would all fail the same way) and count
    as failed.
    """
    from tqdm import tqdm

    num_class = cfg.DATASET.num_class
    classes = dataset_classes(num_class, cfg.DATASET.root_dataset, weights_dir)
    outputs = _Outputs(Path(cfg.TEST.result), classes.palette, classes.names, cfg.TEST.save_label)
    options = PredictOptions(window=window_from(cfg.TEST.window_size, cfg.TEST.window_stride),
                             amp=cfg.TEST.amp)
    inputs = {p.resolve() for p in images}
    dataset = TestDataset([{"fpath_img": str(p)} for p in images], cfg.DATASET)
    failed = 0
    for index, name in enumerate(tqdm(output_names(images), desc="test", unit="img")):
        path = images[index]
        try:
            sample = dataset[index]  # decodes and rescales; grayscale/RGBA/16-bit -> RGB
            image = sample["img_ori"]
            # one scale: the argmax of the upsampled logits when the module allows it
            pred = predict_labels(module, sample["img_data"], image.shape[:2], device,
                                  options).cpu().numpy()
            out_path = outputs.write(name, image, pred, inputs)
        except (ImageReadError, FileNotFoundError) as exc:
            logger.error("skipped: %s", exc)
            failed += 1
            continue
        except Exception as exc:  # one bad image must not stop the batch
            if _poisons_device(exc):
                remaining = len(images) - index
                logger.error("stopped at %s: %s: %s; this CUDA error leaves the device unusable "
                             "for this process, so the %d image(s) from this one on are not "
                             "processed (rerun with CUDA_LAUNCH_BLOCKING=1 to see the kernel "
                             "that failed)", path, type(exc).__name__, exc, remaining)
                return failed + remaining
            logger.error("skipped: %s: %s: %s", path, type(exc).__name__, exc)
            logger.debug("traceback", exc_info=True)
            failed += 1
            continue
        shares = ", ".join(f"{outputs.class_names[c]}: {100 * f:.2f}%"
                           for c, f in class_fractions(pred, num_class) if f > 1e-3)
        logger.info("Predictions in [%s] -> %s: %s", path, out_path, shares)
    return failed


def main(argv: list[str] | None = None) -> int:
    prog = common.program_name(PROG) if argv is None else PROG
    common.setup_logging()
    args = None
    try:
        args = parse_args(argv, prog)
        cfg, release = model_setup.load_script_config(args)
        device = common.single_device(args.gpus or cfg.DEVICE)
        check_amp(cfg.TEST.amp, device, "TEST.amp")
        model_setup.check_backend(cfg, [device], "TEST.amp")
        bind_cuda_device(device)
        images, problems = collect_images(args.imgs)
        for problem in problems:
            logger.error("%s", problem)
        if not images:
            raise FileNotFoundError("no input images found in --imgs " + " ".join(args.imgs))
        release = release or model_setup.fallback_release(cfg, args)
        model = model_setup.inference_model(cfg, release, "TEST.checkpoint", "TEST.result",
                                            None)
        module = model.load(device)
    except common.SETUP_ERRORS as exc:
        return common.usage_error(prog, exc, verbose=bool(args and args.verbose))
    failed = len(problems) + _segment_all(cfg, module, device, images, model.weights_dir)
    done = len(images) + len(problems) - failed
    logger.info("Inference done! %d image(s) written to %s, %d failed", done,
                Path(cfg.TEST.result), failed)
    return common.EXIT_SOME_FAILED if failed else 0
