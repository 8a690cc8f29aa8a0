"""Evaluate a trained model on the validation list in one process, GPU or CPU (``eval.py``).

Example::

    python eval.py --cfg config/ade20k-resnet50dilated-ppm_deepsup.yaml --gpus 0
    python eval.py --cfg config/synthetic-mobilenetv2dilated-c1_deepsup.yaml --gpus cpu \\
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
from typing import Any

from mit_semseg.cli import common
from mit_semseg.config import load_config
from mit_semseg.engine.evaluation import EvalJob, evaluate_shard, report_results
from mit_semseg.engine.precision import check_amp

PROG = "eval.py"
logger = logging.getLogger("eval")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.script_parser(PROG, "Semantic segmentation evaluation",
                                  devices_help='device: a GPU index such as 0, or "cpu"')
    return parser.parse_args(argv)


def eval_job(cfg: Any) -> EvalJob:
    """What the config asks to evaluate (``MODEL``, ``DATASET``, ``VAL`` and ``DIR``)."""
    d, v = cfg.DATASET, cfg.VAL
    return EvalJob(model=common.trained_model(cfg, v.checkpoint), root_dataset=d.root_dataset,
                   list_val=d.list_val, scales=tuple(d.imgSizes), max_size=d.imgMaxSize,
                   padding_constant=d.padding_constant, flip=v.flip, amp=v.amp,
                   workers=v.workers, visualize=v.visualize)


def main(argv: list[str] | None = None) -> int:
    common.setup_logging()
    try:
        args = parse_args(argv)
        cfg = load_config(args.cfg, args.opts)
        device = common.single_device(args.gpus or cfg.DEVICE,
                                      "; use eval_multipro.py for several")
        check_amp(cfg.VAL.amp, device, "VAL.amp")
        common.setup_logging(cfg.DIR, filename="eval_log.txt")
        logger.info("evaluating %s on %s with %s", cfg.DIR, device, args.cfg)
        job = eval_job(cfg)
        result = evaluate_shard(job, device, progress=True)
    except common.SETUP_ERRORS as exc:
        return common.usage_error(PROG, exc)
    _, text = report_results(job, result, [device], extra={"processes": 1})
    print(text)
    print("Evaluation Done!")
    return 0
