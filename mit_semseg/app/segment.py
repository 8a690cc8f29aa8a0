"""One photo segmented by one model, and the files the page shows and downloads from it.

:func:`segment` runs :func:`~mit_semseg.inference.predict.predict_labels_and_confidence` with
the model's options for the chosen mode, so the labels are those ``test.py`` writes for the
same model, image and scales. A :class:`Segmentation` keeps what the page needs:

* :meth:`~Segmentation.maps`: labels and confidence as raw arrays, for drawing the overlay and
  answering the mouse;
* :meth:`~Segmentation.label_png`: ``test.py``'s label file (``TEST.save_label``; value =
  class + 1);
* :meth:`~Segmentation.panel_png`: ``test.py``'s picture (image | prediction | legend);
* :meth:`~Segmentation.image_jpeg`: the photo as the model saw it (upright);
* :meth:`~Segmentation.shares`: the classes present with their share of the pixels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mit_semseg.app.catalog import ModelChoice
from mit_semseg.data.image_io import label_file_array
from mit_semseg.inference.predict import predict_labels_and_confidence
from mit_semseg.viz import class_fractions, encode_image, prediction_panel

__all__ = ["CONFIDENCE_SCALE", "Segmentation", "segment"]

# confidence is sent as uint16: probability * CONFIDENCE_SCALE, rounded
CONFIDENCE_SCALE = 65535


@dataclass(frozen=True, eq=False)
class Segmentation:
    """A photo's labels under one model.

    Attributes:
        choice, epoch, mode: which model and how (see :mod:`mit_semseg.app.catalog`).
        photo_name: the photo's file name, for downloads.
        image: ``(H, W, 3)`` uint8 RGB, upright, as the model saw it.
        labels: ``(H, W)`` uint16 0-based classes.
        confidence: ``(H, W)`` float32, each pixel's probability of its label.
        seconds: wall time of the prediction (scaling, network, upsampling; not the queue).
    """

    choice: ModelChoice
    epoch: int
    mode: str
    photo_name: str
    image: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray
    seconds: float

    def shares(self) -> list[tuple[int, float]]:
        """``(class, share of the pixels)`` of every class present, largest first."""
        return class_fractions(self.labels, self.choice.num_class)

    def maps(self) -> bytes:
        """Labels then confidence (``* CONFIDENCE_SCALE``), each ``H * W`` little-endian
        uint16, row by row."""
        confidence = np.rint(self.confidence * CONFIDENCE_SCALE).astype("<u2")
        return self.labels.astype("<u2").tobytes() + confidence.tobytes()

    def label_png(self) -> bytes:
        """``test.py``'s label file: value = class + 1, uint8 (uint16 from 256 classes)."""
        return encode_image(label_file_array(self.labels, self.choice.num_class))

    def panel_png(self) -> bytes:
        """``test.py``'s picture of the prediction."""
        return encode_image(prediction_panel(self.image, self.labels, self.choice.palette,
                                             self.choice.class_names))

    def image_jpeg(self) -> bytes:
        return encode_image(self.image, ".jpg")

    def file_stem(self) -> str:
        """``<photo>_<model>[_epoch<N>]_<mode>``, for the downloads' names."""
        photo = self.photo_name.rsplit(".", 1)[0] or "photo"
        epoch = f"_epoch{self.epoch}" if self.choice.kind == "run" else ""
        return f"{photo}_{self.choice.key}{epoch}_{self.mode}"


def segment(module: Any, sample: dict[str, Any], choice: ModelChoice, epoch: int, mode: str,
            device: torch.device, photo_name: str) -> Segmentation:
    """Predicts a photo read by :func:`mit_semseg.app.photos.read_photo` with ``module``
    (``choice`` at ``epoch``, loaded on ``device``) in ``mode``."""
    image = sample["img_ori"]
    start = time.perf_counter()
    labels, confidence = predict_labels_and_confidence(
        module, sample["img_data"], image.shape[:2], device, choice.predict_options(mode))
    labels, confidence = labels.cpu().numpy(), confidence.float().cpu().numpy()
    seconds = time.perf_counter() - start
    return Segmentation(choice, epoch, mode, photo_name, image, labels.astype(np.uint16),
                        confidence, seconds)
