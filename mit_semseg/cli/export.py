"""Export a trained model for deployment: ONNX or ``torch.export`` (``mit-semseg-export``).

Example (the config gives the architecture, ``DIR`` + ``TEST.checkpoint`` the weights)::

    mit-semseg-export --cfg config/ade20k-resnet50dilated-ppm_deepsup.yaml \\
        --format onnx --output model.onnx DIR ckpt/ade20k-resnet50dilated-ppm_deepsup
    python -m mit_semseg.cli.export ...      # the same without the console script

After writing, the exported model is run on an odd-sized random image and compared with the
eager model (onnxruntime for ONNX, see :mod:`mit_semseg.deploy`); a difference above
``--tolerance`` is an error. Exit status: 0 exported and checked, 1 the check failed, 2 a setup
error (config, weights, missing packages), reported in one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

import torch

from mit_semseg.cli import common
from mit_semseg.config import load_config
from mit_semseg.deploy.export import FORMATS, check_program, export_onnx, export_program
from mit_semseg.deploy.onnxruntime import check_onnx

PROG = "mit-semseg-export"
logger = logging.getLogger("export")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG,
                                     description="Export a trained model to ONNX or torch.export")
    parser.add_argument("--cfg", required=True, metavar="FILE|NAME", help="model config file")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--output", required=True, metavar="FILE",
                        help="file to write (.onnx or .pt2)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest accepted probability difference from the eager model")
    parser.add_argument("--no-check", action="store_true",
                        help="skip running the exported model against the eager one")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="config overrides as KEY VALUE pairs (DIR, TEST.checkpoint, ...)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    args = parse_args(argv)
    common.setup_logging()
    try:
        cfg = load_config(args.cfg, args.opts)
        # the export folds BatchNorm on its own copy
        model = dataclasses.replace(common.trained_model(cfg, cfg.TEST.checkpoint),
                                    fast_inference=False)
        module = model.load(torch.device("cpu"))
        start = time.perf_counter()
        metadata = {"arch_encoder": cfg.MODEL.arch_encoder,
                    "arch_decoder": cfg.MODEL.arch_decoder,
                    "checkpoint": str(Path(cfg.DIR) / cfg.TEST.checkpoint),
                    "input": "image: RGB, /255, normalised by ImageNet mean and std, "
                             "(B, 3, H, W)"}
        if args.format == "onnx":
            path = export_onnx(module, args.output, metadata)
        else:
            path = export_program(module, args.output)
    except (*common.SETUP_ERRORS, ImportError, RuntimeError) as error:
        return common.usage_error(PROG, error)
    logger.info("wrote %s (%s) in %.1f s", path, args.format, time.perf_counter() - start)
    if args.no_check:
        return 0
    difference = (check_onnx(module, path) if args.format == "onnx"
                  else check_program(module, path))
    if difference > args.tolerance:
        logger.error("exported probabilities differ from the eager model's by %.2e (> %.0e)",
                     difference, args.tolerance)
        return common.EXIT_SOME_FAILED
    logger.info("checked: probabilities within %.2e of the eager model's", difference)
    return 0


if __name__ == "__main__":
    sys.exit(main())
