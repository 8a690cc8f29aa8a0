"""Inference with onnxruntime behind the interface of the eager model.

:class:`OnnxRuntimeSegmenter` loads a model written by :mod:`mit_semseg.export` and answers
like a :class:`~mit_semseg.models.SegmentationModule` in inference:
``segmenter({'img_data': images}, segSize=(H, W))`` and ``segmenter.predict(images, (H, W))``
give ``(B, num_class, H, W)`` probabilities, so
:func:`mit_semseg.engine.inference.predict_probs` and the evaluation loop take it in place of
the module. It also has ``logits(images)``, which ``predict_probs`` prefers: the network runs
in onnxruntime up to the class scores, and the full-resolution tail runs in PyTorch by bands
(:mod:`mit_semseg.engine.score_maps`), exactly as for the eager model.

onnxruntime is an optional dependency: ``pip install 'mit_semseg[onnx]'``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mit_semseg.engine.score_maps import LogitsSegmenter

__all__ = ["OnnxRuntimeSegmenter"]


class OnnxRuntimeSegmenter(LogitsSegmenter):
    """An exported ONNX segmentation model run by onnxruntime on the CPU.

    Args:
        path: ``.onnx`` file from ``python -m mit_semseg.export`` (inputs ``image``, outputs
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
                                    "python -m mit_semseg.export --format onnx)")
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
                             "with python -m mit_semseg.export)")
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
