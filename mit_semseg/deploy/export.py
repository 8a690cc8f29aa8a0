"""Export a segmentation model for deployment: ONNX and ``torch.export``, any height and width.

The exported network maps a normalised image ``image`` (B, 3, H, W) to two outputs:

* ``logits`` (B, num_class, h, w): class scores at the decoder's resolution (1/4 or 1/8);
  :class:`mit_semseg.deploy.onnxruntime.OnnxRuntimeSegmenter` uses these, so that
  multi-scale evaluation can resize them to any size;
* ``probs`` (B, num_class, H, W): softmax of the scores bilinearly upsampled to the input
  size, what a deployment usually wants.

What changes on the way (all exact up to float rounding; the export checks it):

* BatchNorm is folded into the convolutions; deep-supervision heads are dropped (they only
  serve training);
* for ONNX, every ``AdaptiveAvgPool2d`` (PPM and UPerNet pyramid pooling) becomes
  :class:`mit_semseg.nn.resample.MatrixAdaptiveAvgPool2d`: ONNX pooling has fixed kernels, which
  cannot give PyTorch's adaptive bins for an input size that is only known at run time.

The command line is ``mit-semseg-export`` (:mod:`mit_semseg.cli.export`); the ONNX model is
run by :mod:`mit_semseg.deploy.onnxruntime`, which also checks an export against the eager model.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mit_semseg.files import atomic_write
from mit_semseg.inference.fast_path import LogitsNetwork, fold_batchnorm
from mit_semseg.models.layers import upsample
from mit_semseg.nn.resample import MatrixAdaptiveAvgPool2d

__all__ = [
    "FORMATS",
    "InferenceNetwork",
    "export_onnx",
    "export_program",
    "check_program",
    "example_and_dims",
    "inference_network",
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


def example_and_dims(size: tuple[int, int], input_name: str = "image", min_size: int = MIN_SIZE
                     ) -> tuple[torch.Tensor, dict]:
    """A random ``(1, 3, *size)`` image and the ``dynamic_shapes`` of ``torch.export`` that
    make the height and width of the input ``input_name`` dynamic (``min_size``..``MAX_SIZE``)."""
    height = torch.export.Dim("height", min=min_size, max=MAX_SIZE)
    width = torch.export.Dim("width", min=min_size, max=MAX_SIZE)
    example = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    return example, {input_name: {2: height, 3: width}}


def export_program(segmentation_module: nn.Module, path: str | os.PathLike,
                   example_size: tuple[int, int] = (97, 131)) -> Path:
    """Writes a ``torch.export`` program (``.pt2``) with dynamic height and width.

    Load it with ``torch.export.load(path).module()``; it returns ``(logits, probs)``.
    """
    network = inference_network(segmentation_module)
    example, dims = example_and_dims(example_size)
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
    example, dims = example_and_dims(example_size)
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


def check_program(segmentation_module: nn.Module, path: Path,
                   size: tuple[int, int] = (77, 109)) -> float:
    image = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    program = torch.export.load(path).module()
    with torch.inference_mode():
        expected = segmentation_module.eval()({"img_data": image}, segSize=size)
        got = program(image)[1]
    return (got - expected).abs().max().item()
