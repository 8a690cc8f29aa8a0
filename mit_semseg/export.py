"""Export a segmentation model for deployment: ONNX and ``torch.export``, any height and width.

The exported network maps a normalised image ``image`` (B, 3, H, W) to two outputs:

* ``logits`` (B, num_class, h, w): class scores at the decoder's resolution (1/4 or 1/8);
  :class:`mit_semseg.engine.onnxruntime_backend.OnnxRuntimeSegmenter` uses these, so that
  multi-scale evaluation can resize them to any size;
* ``probs`` (B, num_class, H, W): softmax of the scores bilinearly upsampled to the input
  size, what a deployment usually wants.

What changes on the way (all exact up to float rounding; the export checks it):

* BatchNorm is folded into the convolutions; deep-supervision heads are dropped (they only
  serve training);
* for ONNX, every ``AdaptiveAvgPool2d`` (PPM and UPerNet pyramid pooling) becomes
  :class:`mit_semseg.nn.resample.MatrixAdaptiveAvgPool2d`: ONNX pooling has fixed kernels, which
  cannot give PyTorch's adaptive bins for an input size that is only known at run time.

Command line (the config gives the architecture, ``DIR`` + ``TEST.checkpoint`` the weights)::

    python -m mit_semseg.export --cfg config/ade20k-resnet50dilated-ppm_deepsup.yaml \\
        --format onnx --output model.onnx DIR ckpt/ade20k-resnet50dilated-ppm_deepsup

After writing, the exported model is run on an odd-sized random image and compared with the
eager model (onnxruntime for ONNX); a difference above ``--tolerance`` is an error.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mit_semseg.files import atomic_write
from mit_semseg.models.layers import upsample
from mit_semseg.nn.resample import MatrixAdaptiveAvgPool2d
from mit_semseg.perf import LogitsNetwork, fold_batchnorm

__all__ = [
    "FORMATS",
    "InferenceNetwork",
    "check_onnx",
    "export_onnx",
    "export_program",
    "inference_network",
    "main",
]

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torch-export")
OUTPUTS = ("logits", "probs")
MIN_SIZE = 32  # smallest input side the exported graphs accept (stride-32 encoders need 1 px)
MAX_SIZE = 8192


class InferenceNetwork(LogitsNetwork):
    """``image -> (logits, probs)`` of a segmentation module, the graph that is exported."""

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = super().forward(image)
        probs = F.softmax(upsample(logits, image.shape[-2:]), dim=1)
        return logits, probs  # (B, C, h, w), (B, C, H, W)


def _drop_deep_supervision(decoder: nn.Module) -> None:
    for name, _ in list(decoder.named_children()):
        if name.endswith("_deepsup"):
            delattr(decoder, name)
    if getattr(decoder, "deep_sup", False):
        decoder.deep_sup = False


def inference_network(segmentation_module: nn.Module, for_onnx: bool = False
                      ) -> InferenceNetwork:
    """An eval-mode, BatchNorm-folded copy of ``segmentation_module`` ready to export.

    ``segmentation_module`` itself is left unchanged. With ``for_onnx``, adaptive pooling is
    rewritten as matrix products (see the module docstring).
    """
    module = copy.deepcopy(segmentation_module).eval()
    device = next(module.parameters()).device
    image = torch.zeros(1, 3, 64, 64, device=device)
    fold_batchnorm(module, lambda: module({"img_data": image}, segSize=(64, 64)))
    _drop_deep_supervision(module.decoder)
    if for_onnx:
        for parent in list(module.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.AdaptiveAvgPool2d):
                    setattr(parent, name, MatrixAdaptiveAvgPool2d(child.output_size))
    return InferenceNetwork(module.encoder, module.decoder).eval()


def _example_and_dims(size: tuple[int, int]) -> tuple[torch.Tensor, dict]:
    height = torch.export.Dim("height", min=MIN_SIZE, max=MAX_SIZE)
    width = torch.export.Dim("width", min=MIN_SIZE, max=MAX_SIZE)
    example = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    return example, {"image": {2: height, 3: width}}


def export_program(segmentation_module: nn.Module, path: str | os.PathLike,
                   example_size: tuple[int, int] = (97, 131)) -> Path:
    """Writes a ``torch.export`` program (``.pt2``) with dynamic height and width.

    Load it with ``torch.export.load(path).module()``; it returns ``(logits, probs)``.
    """
    network = inference_network(segmentation_module)
    example, dims = _example_and_dims(example_size)
    with torch.no_grad():
        program = torch.export.export(network, (example,), dynamic_shapes=dims)
    path = Path(path)
    atomic_write(path, lambda f: torch.export.save(program, f))
    return path


def export_onnx(segmentation_module: nn.Module, path: str | os.PathLike,
                metadata: dict[str, str] | None = None,
                example_size: tuple[int, int] = (97, 131)) -> Path:
    """Writes an ONNX model with inputs ``image`` (B, 3, H, W) and outputs ``logits``, ``probs``.

    Height and width are dynamic (``MIN_SIZE``..``MAX_SIZE``); ``metadata`` is stored in the
    model's ``metadata_props`` (the export adds ``num_class``).

    Raises:
        ImportError: ``onnx``/``onnxscript`` are not installed (``pip install mit_semseg[onnx]``).
    """
    try:
        import onnx
        import onnxscript  # noqa: F401  (the exporter needs it)
    except ImportError as error:
        raise ImportError("ONNX export needs the onnx and onnxscript packages: "
                          "pip install 'mit_semseg[onnx]'") from error
    network = inference_network(segmentation_module, for_onnx=True)
    example, dims = _example_and_dims(example_size)
    # the exporter's graph passes log every rewrite at INFO: hundreds of lines per model
    passes_logs = {name: logging.getLogger(name) for name in ("onnx_ir", "onnxscript")}
    levels = {name: log.level for name, log in passes_logs.items()}
    try:
        for log in passes_logs.values():
            log.setLevel(logging.WARNING)
        with torch.no_grad():
            program = torch.onnx.export(network, (example,), input_names=["image"],
                                        output_names=list(OUTPUTS), dynamic_shapes=dims,
                                        dynamo=True, optimize=True, verbose=False)
    finally:
        for name, log in passes_logs.items():
            log.setLevel(levels[name])
    model = program.model_proto
    info = {"num_class": str(network.decoder.num_class), **(metadata or {})}
    for key, value in info.items():
        model.metadata_props.add(key=key, value=str(value))
    onnx.checker.check_model(model)
    path = Path(path)
    atomic_write(path, lambda f: f.write(model.SerializeToString()))
    return path


def check_onnx(segmentation_module: nn.Module, path: str | os.PathLike,
               size: tuple[int, int] = (77, 109)) -> float:
    """Largest difference between the probabilities of the ONNX model (onnxruntime) and of
    ``segmentation_module`` on a random ``size`` image."""
    from mit_semseg.engine.onnxruntime_backend import OnnxRuntimeSegmenter

    image = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = segmentation_module.eval()({"img_data": image}, segSize=size)
    got = OnnxRuntimeSegmenter(path).probabilities(image)
    return (got - expected).abs().max().item()


def _check_program(segmentation_module: nn.Module, path: Path,
                   size: tuple[int, int] = (77, 109)) -> float:
    image = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    program = torch.export.load(path).module()
    with torch.inference_mode():
        expected = segmentation_module.eval()({"img_data": image}, segSize=size)
        got = program(image)[1]
    return (got - expected).abs().max().item()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mit_semseg.export",
                                     description="Export a trained model to ONNX or torch.export")
    parser.add_argument("--cfg", required=True, metavar="FILE", help="model config file")
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
    """Command line entry point; returns the exit code (0 ok, 1 check failed, 2 bad setup)."""
    import dataclasses

    from mit_semseg.cli.common import setup_logging, trained_model
    from mit_semseg.config import ConfigError, load_config
    from mit_semseg.engine.inference import load_segmentation_module

    args = parse_args(argv)
    setup_logging()
    try:
        cfg = load_config(args.cfg, args.opts)
        # export folds BatchNorm on its own copy
        model = dataclasses.replace(trained_model(cfg, cfg.TEST.checkpoint), fast_inference=False)
        module = load_segmentation_module(model, torch.device("cpu"))
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as error:
        logger.error("%s", error)
        return 2
    start = time.perf_counter()
    metadata = {"arch_encoder": cfg.MODEL.arch_encoder, "arch_decoder": cfg.MODEL.arch_decoder,
                "checkpoint": str(Path(cfg.DIR) / cfg.TEST.checkpoint),
                "input": "image: RGB, /255, normalised by ImageNet mean and std, (B, 3, H, W)"}
    try:
        if args.format == "onnx":
            path = export_onnx(module, args.output, metadata)
        else:
            path = export_program(module, args.output)
    except ImportError as error:
        logger.error("%s", error)
        return 2
    logger.info("wrote %s (%s) in %.1f s", path, args.format, time.perf_counter() - start)
    if args.no_check:
        return 0
    difference = (check_onnx(module, path) if args.format == "onnx"
                  else _check_program(module, path))
    if difference > args.tolerance:
        logger.error("exported probabilities differ from the eager model's by %.2e (> %.0e)",
                     difference, args.tolerance)
        return 1
    logger.info("checked: probabilities within %.2e of the eager model's", difference)
    return 0


if __name__ == "__main__":
    sys.exit(main())
