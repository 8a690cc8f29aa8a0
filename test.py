"""Segment images with a trained model and save pictures of the predictions.

Example::

    python test.py --imgs photo.jpg more_photos/ list.txt \\
        --cfg config/ade20k-resnet50dilated-ppm_deepsup.yaml --gpu cpu \\
        DIR ckpt/ade20k-resnet50dilated-ppm_deepsup TEST.result out/ TEST.save_label True

``--imgs`` takes image files, folders (searched recursively for all common image extensions)
and list files (``.txt``/``.lst``/``.odgt``: one path or ``{"fpath_img": ...}`` record per line,
relative to the list's folder). For every image ``TEST.result/<name>.png`` shows
``[input | colourised prediction | legend of the main classes with pixel shares]``; with
``TEST.save_label True`` the raw prediction is also saved as ``TEST.result/labels/<name>.png``
(value = class index + 1 as in ADE20K annotations; uint8, or uint16 above 255 classes).
``<name>`` is the image's path relative to the inputs' common folder, ``/`` replaced by ``__``.

Grayscale, RGBA, 16-bit and tiny images are converted; unreadable files (missing, empty,
corrupt) are reported by name and skipped. Exit code: 0 if every image was processed, 1 if some
could not be, 2 on a setup error (bad config, missing checkpoint, no input images).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from mit_semseg.config import ConfigError, load_config
from mit_semseg.data import ImageReadError, TestDataset, ade_palette
from mit_semseg.evaluation import resolve_class_names
from mit_semseg.inference import (
    collect_images,
    load_segmentation_module,
    output_names,
    predict_probs,
)
from mit_semseg.utils import NotSupportedCliException, resolve_devices, setup_logging
from mit_semseg.viz import class_fractions, prediction_panel, save_image

logger = logging.getLogger("test")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Semantic segmentation inference")
    parser.add_argument(
        "--imgs", required=True, nargs="+", metavar="PATH", help="images, folders or list files"
    )
    parser.add_argument(
        "--cfg",
        default="config/ade20k-resnet50dilated-ppm_deepsup.yaml",
        metavar="FILE",
        help="path to the config file",
    )
    parser.add_argument(
        "--gpu",
        default=None,
        help='device: a GPU index such as 0, or "cpu" (default: the config\'s DEVICE)',
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides as KEY VALUE pairs"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    try:
        cfg = load_config(args.cfg, args.opts)
        devices = resolve_devices(cfg.DEVICE if args.gpu is None else args.gpu)
        if len(devices) != 1:
            raise NotSupportedCliException(f"--gpu takes one device, got {args.gpu!r}")
        device = devices[0]
        images, problems = collect_images(args.imgs)
        for problem in problems:
            logger.error("%s", problem)
        if not images:
            raise FileNotFoundError("no input images found in --imgs " + " ".join(args.imgs))
        module = load_segmentation_module(
            cfg.MODEL, cfg.DATASET.num_class, cfg.DIR, cfg.TEST.checkpoint, device
        )
    except (ConfigError, FileNotFoundError, NotSupportedCliException, ValueError) as exc:
        logger.error("%s", exc)
        return 2

    from tqdm import tqdm

    num_class = cfg.DATASET.num_class
    palette = ade_palette(num_class)
    names = resolve_class_names(num_class, cfg.DATASET.root_dataset)
    window = None
    if cfg.TEST.window_size > 0:
        window = (cfg.TEST.window_size, cfg.TEST.window_stride or cfg.TEST.window_size * 2 // 3)
    result_dir = Path(cfg.TEST.result)
    inputs = {p.resolve() for p in images}
    dataset = TestDataset([{"fpath_img": str(p)} for p in images], cfg.DATASET)
    failed = len(problems)
    names_out = output_names(images)
    for index in tqdm(range(len(images)), desc="test", unit="img"):
        path, name = images[index], names_out[index]
        out_path = result_dir / f"{name}.png"
        if out_path.resolve() in inputs:  # never overwrite an input image
            out_path = result_dir / f"{name}_seg.png"
        try:
            sample = dataset[index]  # decodes and rescales; grayscale/RGBA/16-bit -> RGB
            img = sample["img_ori"]
            probs = predict_probs(module, sample["img_data"], img.shape[:2], device,
                                  window=window, amp=cfg.TEST.amp)
            pred = probs.argmax(0).cpu().numpy()
            save_image(out_path, prediction_panel(img, pred, palette, names))
            if cfg.TEST.save_label:
                dtype = np.uint8 if num_class < 256 else np.uint16
                save_image(result_dir / "labels" / f"{name}.png", (pred + 1).astype(dtype))
        except (ImageReadError, FileNotFoundError) as exc:
            logger.error("skipped: %s", exc)
            failed += 1
            continue
        except Exception as exc:  # one bad image must not stop the batch
            logger.error("skipped: %s: %s: %s", path, type(exc).__name__, exc)
            logger.debug("traceback", exc_info=True)
            failed += 1
            continue
        shares = ", ".join(
            f"{names[c]}: {100 * f:.2f}%" for c, f in class_fractions(pred, num_class) if f > 1e-3
        )
        logger.info("Predictions in [%s] -> %s: %s", path, out_path, shares)
    done = len(images) + len(problems) - failed
    logger.info("Inference done! %d image(s) written to %s, %d failed", done, result_dir, failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
