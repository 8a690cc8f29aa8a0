"""Inference with onnxruntime behind the interface of the eager model.

:class:`OnnxRuntimeSegmenter` loads a model written by :mod:`mit_semseg.deploy.export` and answers
like a :class:`~mit_semseg.models.SegmentationModule` in inference:
``segmenter({'img_data': images}, segSize=(H, W))`` and ``segmenter.predict(images, (H, W))``
give ``(B, num_class, H, W)`` probabilities, so
:func:`mit_semseg.inference.predict.predict_probs` and the evaluation loop take it in place of
the module. It also has ``logits(images)``, which ``predict_probs`` prefers: the network runs
in onnxruntime up to the class scores, and the full-resolution tail runs in PyTorch by bands
(:mod:`mit_semseg.inference.banded_tail`), exactly as for the eager model.

:func:`cached_onnx_export` gives the ONNX file of a trained model for ``MODEL.backend
onnxruntime``: exported on first use, checked against the PyTorch model and cached under a name
made from the architecture and the SHA-256 of the weight files, so retrained weights in the same
place get a new export and the same weights anywhere share one.

onnxruntime is an optional dependency: ``pip install 'mit_semseg[onnx]'``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from mit_semseg.deploy.export import export_onnx
from mit_semseg.download import cache_root, sha256_file
from mit_semseg.files import exclusive_lock
from mit_semseg.inference.banded_tail import LogitsSegmenter
from mit_semseg.inference.trained_model import TrainedModel

__all__ = [
    "EXPORT_TOLERANCE",
    "OnnxRuntimeModel",
    "OnnxRuntimeSegmenter",
    "cached_onnx_export",
    "check_onnx",
    "onnx_cache_path",
]

logger = logging.getLogger(__name__)

# Largest probability difference accepted between a fresh export and the PyTorch model on a
# random image. The export folds BatchNorm, which moves deep random-weight models by up to
# ~1.3e-4 (docs/evaluation.md); a broken graph (wrong pooling bins, a dropped layer) is off
# by 1e-2 or more.
EXPORT_TOLERANCE = 1e-3
# Part of the cache key: raise it when the exported graph's inputs or outputs change.
_EXPORT_FORMAT = "image->logits,probs v1"


class OnnxRuntimeSegmenter(LogitsSegmenter):
    """An exported ONNX segmentation model run by onnxruntime on the CPU.

    Args:
        path: ``.onnx`` file from ``mit-semseg-export`` (inputs ``image``, outputs
            ``logits`` and ``probs``).
        threads: intra-op threads; default ``torch.get_num_threads()``, so that both backends
            use the same number.

    Raises:
        ImportError: onnxruntime is not installed.
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a model exported by this package (names what is missing).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        try:
            import onnxruntime
        except ImportError as error:
            raise ImportError("the onnxruntime backend needs onnxruntime: "
                              "pip install 'mit_semseg[onnx]'") from error
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path} (write one with "
                                    "mit-semseg-export --format onnx)")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(self.path), options,
                                                    providers=["CPUExecutionProvider"])
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = {o.name for o in self.session.get_outputs()}
        if inputs != ["image"] or not {"logits", "probs"} <= outputs:
            raise ValueError(f"{self.path} has inputs {inputs} and outputs {sorted(outputs)}; "
                             "expected input 'image' and outputs 'logits', 'probs' (export it "
                             "with mit-semseg-export)")
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.num_class = int(self.metadata.get("num_class", 0)) or None
        super().__init__(lambda images: self._run("logits", images))

    def _run(self, output: str, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        result = self.session.run([output], {"image": array})[0]
        return torch.from_numpy(result).to(images.device)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """The model's own ``probs`` output: probabilities at the input size."""
        return self._run("probs", images)


def check_onnx(segmentation_module: nn.Module, path: str | os.PathLike,
               size: tuple[int, int] = (77, 109)) -> float:
    """Largest difference between the probabilities of the ONNX model (onnxruntime) and of
    ``segmentation_module`` on a random ``size`` image."""
    image = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = segmentation_module.eval()({"img_data": image}, segSize=size)
    got = OnnxRuntimeSegmenter(path).probabilities(image)
    return (got - expected).abs().max().item()


@dataclass(frozen=True)
class OnnxRuntimeModel(TrainedModel):
    """A trained model run by onnxruntime from its ONNX export (``MODEL.backend onnxruntime``).

    Attributes:
        onnx_file: the export of the weights of :meth:`weight_files` (see
            :func:`cached_onnx_export`).
    """

    onnx_file: str | Path = ""
    backend: ClassVar[str] = "onnxruntime"

    def load(self, device: torch.device) -> OnnxRuntimeSegmenter:
        """The segmenter of :attr:`onnx_file`; it computes on the CPU whatever ``device`` is
        (the full-size tail runs there in PyTorch)."""
        logger.info("running %s with onnxruntime", self.onnx_file)
        return OnnxRuntimeSegmenter(self.onnx_file)


def onnx_cache_path(model: TrainedModel, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`cached_onnx_export` keeps the export of ``model``:
    ``<cache_dir or cache_root()/onnx>/<encoder>-<decoder>-<key>.onnx``, ``key`` hashing the
    architecture, the class count and the content of both weight files (a dilated and a plain
    ResNet have the same weights but not the same graph)."""
    digest = hashlib.sha256()
    for text in (_EXPORT_FORMAT, model.arch_encoder, model.arch_decoder, str(model.num_class)):
        digest.update(text.encode() + b"\0")
    for path in model.weight_files().values():
        digest.update(bytes.fromhex(sha256_file(path)))
    folder = Path(cache_dir) if cache_dir else cache_root() / "onnx"
    return folder / f"{model.arch_encoder}-{model.arch_decoder}-{digest.hexdigest()[:16]}.onnx"


def cached_onnx_export(model: TrainedModel, cache_dir: str | os.PathLike | None = None) -> Path:
    """The ONNX file of ``model``'s weights, exported on first use (see :func:`onnx_cache_path`).

    A new export is checked (:func:`check_onnx`) before it is published, by
    an atomic rename, so no process ever loads a partial or unchecked file; a lock beside it
    makes concurrent callers (torchrun ranks) wait for one export instead of each making one.

    Raises:
        FileNotFoundError: a weight file is missing.
        ImportError: onnx, onnxscript or onnxruntime is not installed.
        ValueError: the export differs from the PyTorch model by more than
            :data:`EXPORT_TOLERANCE` (nothing is cached).
    """
    path = onnx_cache_path(model, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(f"{path}.lock"):
        if path.is_file():
            logger.info("ONNX model (cached): %s", path)
            return path
        weights = model.weight_files()
        logger.info("exporting %s and %s to ONNX for onnxruntime (once; cached as %s)",
                    weights["encoder"], weights["decoder"], path)
        start = time.perf_counter()
        plain = TrainedModel(**{**model.plain_fields(), "fast_inference": False})
        module = plain.load(torch.device("cpu"))
        metadata = {"arch_encoder": model.arch_encoder, "arch_decoder": model.arch_decoder,
                    "weights": f"{weights['encoder']}, {weights['decoder']}"}
        unchecked = path.with_name(f".{path.name}.{os.getpid()}.unchecked")
        try:
            export_onnx(module, unchecked, metadata)
            difference = check_onnx(module, unchecked)
            if not difference <= EXPORT_TOLERANCE:  # also catches NaN
                raise ValueError(f"the ONNX export of {weights['encoder']} differs from the "
                                 f"PyTorch model by {difference:.2e} (> {EXPORT_TOLERANCE:.0e}); "
                                 "use MODEL.backend torch")
            os.replace(unchecked, path)
        finally:
            unchecked.unlink(missing_ok=True)
        logger.info("exported and checked in %.1f s (probabilities within %.1e of PyTorch's)",
                    time.perf_counter() - start, difference)
    return path
