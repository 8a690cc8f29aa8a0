"""Evaluate a trained model on the validation list in one process, GPU or CPU (``eval.py``).

Example::

    python eval.py --cfg ade20k-resnet50dilated-ppm_deepsup --gpus 0
    python eval.py --cfg synthetic-mobilenetv2dilated-c1_deepsup --gpus cpu \\
        VAL.checkpoint epoch_4.pth VAL.visualize True

Loads ``DIR/encoder_<VAL.checkpoint>`` and ``DIR/decoder_<VAL.checkpoint>``, predicts every
validation image at all ``DATASET.imgSizes`` (averaging probabilities; with ``VAL.flip`` also
flipped) at its original resolution, prints per-class IoU and the summary line, and writes
``DIR/eval_metrics.json``, ``DIR/class_iou.csv``, ``DIR/confusion_matrix.{npy,png}`` (and
``DIR/result/*.png`` with ``VAL.visualize True``). ``--model NAME`` evaluates a released model
(downloaded into the cache on first use) and writes to ``ckpt/<NAME>`` unless ``DIR`` is on the
command line (:mod:`mit_semseg.cli.model_setup`). Before building the model it checks the
validation list, the weight files and DIR (:mod:`mit_semseg.cli.preflight`). Exit status 0 on
success, 2 on a setup error (:mod:`mit_semseg.cli.common`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from mit_semseg.cli import common, model_setup
from mit_semseg.cli.devices import bind_cuda_device
from mit_semseg.inference.evaluation import EvalJob, evaluate_shard, report_results
from mit_semseg.inference.predict import PredictOptions
from mit_semseg.inference.trained_model import TrainedModel
from mit_semseg.nn.precision import check_amp

PROG = "eval.py"
logger = logging.getLogger("eval")


EXAMPLES = (
    "{prog} --cfg ade20k-resnet50dilated-ppm_deepsup --gpus 0 DIR ckpt/my_run",
    "{prog} --model ade20k-resnet50dilated-ppm_deepsup --gpus 0   # results in ckpt/<NAME>",
    "{prog} --cfg config/ade20k-hrnetv2.yaml --gpu cpu VAL.checkpoint epoch_30.pth VAL.flip True",
    "{prog} --cfg my_config.yaml --gpus cpu VAL.visualize True   # pictures in DIR/result/",
)


def parse_args(argv: list[str] | None = None, prog: str = PROG) -> argparse.Namespace:
    parser = common.script_parser(
        prog, "Evaluate a trained model (DIR/{encoder,decoder}_<VAL.checkpoint>) on\n"
        "DATASET.list_val in one process: mIoU, pixel accuracy, per-class IoU and the\n"
        "confusion matrix, written to DIR.",
        devices_help='one device: a GPU index such as 0, or "cpu"', examples=EXAMPLES,
        released_models=True)
    return parser.parse_args(argv)


def eval_job(cfg: Any, model: TrainedModel | None = None) -> EvalJob:
    """What the config asks to evaluate (``DATASET``, ``VAL``, ``DIR``) with ``model``
    (default: ``DIR``'s weights of ``VAL.checkpoint``, see :func:`common.trained_model`)."""
    d, v = cfg.DATASET, cfg.VAL
    if model is None:
        model = common.trained_model(cfg, v.checkpoint)
    return EvalJob(model=model, out_dir=Path(cfg.DIR), root_dataset=d.root_dataset,
                   list_val=d.list_val, scales=tuple(d.imgSizes), max_size=d.imgMaxSize,
                   padding_constant=d.padding_constant, max_pixels=d.max_image_pixels,
                   options=PredictOptions(flip=v.flip, amp=v.amp),
                   workers=v.workers, visualize=v.visualize)


def main(argv: list[str] | None = None) -> int:
    prog = common.program_name(PROG) if argv is None else PROG
    common.setup_logging()
    args = None
    try:
        args = parse_args(argv, prog)
        cfg, release = model_setup.load_script_config(args)
        device = common.single_device(args.gpus or cfg.DEVICE,
                                      "; use eval_multipro.py for several")
        check_amp(cfg.VAL.amp, device, "VAL.amp")
        model_setup.check_backend(cfg, [device], "VAL.amp")
        job = eval_job(cfg, model_setup.inference_model(cfg, release, "VAL.checkpoint", "DIR",
                                                        "list_val"))
        bind_cuda_device(device)
        common.setup_logging(cfg.DIR, filename="eval_log.txt")
        logger.info("evaluating the weights in %s on %s with %s; results in %s",
                    job.model.weights_dir, device, job.model.backend, cfg.DIR)
        result = evaluate_shard(job, device, progress=True)
    except common.SETUP_ERRORS as exc:
        return common.usage_error(prog, exc, verbose=bool(args and args.verbose))
    _, text = report_results(job, result, [device], extra={"processes": 1})
    print(text)
    print("Evaluation Done!")
    return 0
