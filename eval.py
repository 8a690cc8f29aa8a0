"""Evaluate a trained model on the validation list in one process (GPU or CPU).

Example::

    python eval.py --cfg config/ade20k-resnet50dilated-ppm_deepsup.yaml --gpu 0
    python eval.py --cfg config/synthetic-mobilenetv2dilated-c1_deepsup.yaml --gpu cpu \\
        VAL.checkpoint epoch_4.pth VAL.visualize True

Loads ``DIR/encoder_<VAL.checkpoint>`` and ``DIR/decoder_<VAL.checkpoint>``, predicts every
validation image at all ``DATASET.imgSizes`` (averaging probabilities; with ``VAL.flip`` also
flipped) at its original resolution, prints per-class IoU and the summary line, and writes
``DIR/eval_metrics.json``, ``DIR/class_iou.csv``, ``DIR/confusion_matrix.{npy,png}`` (and
``DIR/result/*.png`` with ``VAL.visualize True``). Exit code 0 on success, 2 on bad input.
"""

from __future__ import annotations

import argparse
import logging
import sys

from mit_semseg.config import ConfigError, load_config
from mit_semseg.evaluation import evaluate_shard, report_results
from mit_semseg.utils import NotSupportedCliException, resolve_devices, setup_logging

logger = logging.getLogger("eval")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Semantic segmentation evaluation")
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
            raise NotSupportedCliException(
                f"--gpu takes one device, got {args.gpu!r}; use eval_multipro.py for several"
            )
        setup_logging(cfg.DIR, filename="eval_log.txt")
        logger.info("evaluating %s on %s with %s", cfg.DIR, devices[0], args.cfg)
        result = evaluate_shard(cfg, devices[0], progress=True)
    except (ConfigError, FileNotFoundError, NotSupportedCliException, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    _, text = report_results(cfg, result, extra={"processes": 1, "device": str(devices[0])})
    print(text)
    print("Evaluation Done!")
    return 0


if __name__ == "__main__":
    sys.exit(main())
