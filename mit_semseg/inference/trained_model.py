"""A trained model on disk, and loading it for inference.

:class:`TrainedModel` names a model by its architecture and its two weight files (a training
run's ``DIR/{encoder,decoder}_<checkpoint>``, or a released model's cached copies); its
:meth:`~TrainedModel.load` builds the PyTorch module for inference, prepared for the fast path
(:mod:`mit_semseg.inference.fast_path`) unless told otherwise. Other backends and
precisions subclass it (:class:`mit_semseg.deploy.onnxruntime.OnnxRuntimeModel`,
:class:`mit_semseg.deploy.int8.Int8Model`), so the evaluation loop, which only
calls ``load``, runs whatever the command line chose, also in worker processes (it is a
picklable value).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from mit_semseg.inference.fast_path import optimize_for_inference
from mit_semseg.models import build_segmentation_model

__all__ = ["TrainedModel"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedModel:
    """A trained model on disk: its architecture and its two weight files.

    Attributes:
        arch_encoder: encoder name (``MODEL.arch_encoder``).
        arch_decoder: decoder name (``MODEL.arch_decoder``).
        num_class: number of classes (``DATASET.num_class``).
        weights_dir: folder of the checkpoint files (``DIR``).
        checkpoint: file suffix such as ``epoch_20.pth`` (``VAL.checkpoint`` /
            ``TEST.checkpoint``): the weights are ``weights_dir/{encoder,decoder}_<checkpoint>``.
        fc_dim: the encoder's last width as the config states it (``MODEL.fc_dim``), checked
            against the encoder; ``None`` skips the check.
        fast_inference: fold BatchNorm into the convolutions, factor the heads and use the
            channels-last layout (``MODEL.fast_inference``, see
            :func:`~mit_semseg.inference.fast_path.optimize_for_inference`).
    """

    arch_encoder: str
    arch_decoder: str
    num_class: int
    weights_dir: str | Path
    checkpoint: str
    fc_dim: int | None = None
    fast_inference: bool = True

    # what runs the network, and in which number format (eval_metrics.json records both)
    backend: ClassVar[str] = "torch"
    precision: ClassVar[str] = "fp32"

    def plain_fields(self) -> dict[str, Any]:
        """The values of :class:`TrainedModel`'s own fields, a subclass's extra ones left out:
        ``TrainedModel(**model.plain_fields())`` is the float PyTorch model under any backend
        or precision (what the ONNX export and int8 quantization start from)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainedModel)}

    def weight_files(self) -> dict[str, Path]:
        """``{"encoder": path, "decoder": path}``."""
        return {part: Path(self.weights_dir) / f"{part}_{self.checkpoint}"
                for part in ("encoder", "decoder")}

    def load(self, device: torch.device) -> nn.Module:
        """Build the model from its weight files, for inference on ``device``.

        Returns:
            a :class:`~mit_semseg.models.SegmentationModule` in eval mode on ``device``.

        Raises:
            FileNotFoundError: naming each missing checkpoint file.
            ValueError: ``fc_dim`` does not match the encoder.
        """
        paths = self.weight_files()
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"checkpoint file(s) not found: {', '.join(missing)} (set DIR to the training "
                "output folder and VAL.checkpoint / TEST.checkpoint to e.g. epoch_20.pth)"
            )
        logger.info("loading %s and %s", paths["encoder"], paths["decoder"])
        module = build_segmentation_model(
            self.arch_encoder, self.arch_decoder, self.num_class, fc_dim=self.fc_dim,
            weights_encoder=str(paths["encoder"]), weights_decoder=str(paths["decoder"]),
        ).to(device).eval()
        if self.fast_inference:
            optimize_for_inference(module, device)
        return module
