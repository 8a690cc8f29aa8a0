"""Names kept only for code written against the original ``mit_semseg`` 1.0.0.

Each section serves one of the original's import paths: ``mit_semseg.utils`` and
``mit_semseg.dataset`` re-export their names from here, ``mit_semseg.models`` serves
``ModelBuilder`` through a lazy ``__getattr__``. Nothing else in the package imports this
module: library code uses the functions these names stand in front of.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch.nn as nn

from mit_semseg.cli.common import setup_logging
from mit_semseg.cli.devices import NotSupportedCliException, parse_devices
from mit_semseg.data.datasets import BaseDataset, TestDataset, TrainDataset, ValDataset
from mit_semseg.metrics import accuracy, intersectionAndUnion
from mit_semseg.models.builder import build_decoder, build_encoder, check_fc_dim
from mit_semseg.models.layers import NormLayer, init_weights
from mit_semseg.viz import colorEncode

__all__ = [
    # mit_semseg.utils
    "AverageMeter",
    "NotSupportedCliException",
    "accuracy",
    "colorEncode",
    "find_recursive",
    "intersectionAndUnion",
    "parse_devices",
    "setup_logger",
    # mit_semseg.dataset
    "BaseDataset",
    "TestDataset",
    "TrainDataset",
    "ValDataset",
    # mit_semseg.models
    "ModelBuilder",
]


def setup_logger(distributed_rank: int = 0, filename: str = "log.txt") -> logging.Logger:
    """Console logging, INFO on rank 0 (``filename`` was ignored by the original too)."""
    del filename
    setup_logging(None, distributed_rank)
    return logging.getLogger("mit_semseg")


def find_recursive(root_dir: str, ext: str = ".jpg") -> list[str]:
    """All files under ``root_dir`` whose name ends with ``ext``, in a sorted, stable order."""
    found = []
    for folder, _, names in sorted(os.walk(root_dir)):
        found.extend(os.path.join(folder, n) for n in sorted(fnmatch.filter(names, "*" + ext)))
    return found


class AverageMeter:
    """Running (optionally weighted) average; works for floats and NumPy arrays."""

    def __init__(self) -> None:
        self.initialized = False
        self.val: Any = None
        self.avg: Any = None
        self.sum: Any = None
        self.count: Any = None

    def initialize(self, val: Any, weight: float) -> None:
        self.val, self.avg, self.sum, self.count = val, val, val * weight, weight
        self.initialized = True

    def update(self, val: Any, weight: float = 1) -> None:
        if self.initialized:
            self.add(val, weight)
        else:
            self.initialize(val, weight)

    def add(self, val: Any, weight: float) -> None:
        self.val = val
        self.sum = self.sum + val * weight
        self.count = self.count + weight
        self.avg = self.sum / self.count

    def value(self) -> Any:
        return self.val

    def average(self) -> Any:
        return self.avg


# ------------------------------------------------------------------- mit_semseg.models
# ``from mit_semseg.models import ModelBuilder`` (build through mit_semseg.models.builder).


class ModelBuilder:
    """The original's builder interface, over :mod:`mit_semseg.models.builder`.

    Differences from the original: an empty ``weights`` means random initialisation unless
    ``pretrained=True`` (the original downloaded ImageNet weights then), weights load strictly,
    and ``use_softmax`` changes nothing, since :class:`~mit_semseg.models.SegmentationModule`
    decides (log-probabilities for the loss in training, probabilities at ``segSize`` in
    inference); a decoder called directly returns logits.
    """

    @staticmethod
    def weights_init(m: nn.Module) -> None:
        """The original's decoder initialisation, applied to ``m`` and its submodules."""
        init_weights(m, fan="in", norm_bias=1e-4)

    @staticmethod
    def build_encoder(arch: str = "resnet50dilated", fc_dim: int = 512, weights: str = "", *,
                      pretrained: bool = False, norm_layer: NormLayer = nn.BatchNorm2d,
                      output_stride: int | None = None) -> nn.Module:
        """See :func:`~mit_semseg.models.build_encoder`; ``fc_dim`` is not used, as in the
        original (the decoder is where widths meet)."""
        return build_encoder(arch, weights=weights, pretrained=pretrained,
                             norm_layer=norm_layer, output_stride=output_stride)

    @staticmethod
    def build_decoder(arch: str = "ppm_deepsup", fc_dim: int | None = 512, num_class: int = 150,
                      weights: str = "", use_softmax: bool = False, *,
                      norm_layer: NormLayer = nn.BatchNorm2d,
                      in_channels: Sequence[int] | None = None) -> nn.Module:
        """See :func:`~mit_semseg.models.build_decoder`. Without ``in_channels`` the decoder
        has the original's layout for ``fc_dim``; with it, ``fc_dim`` must be its last width.
        ``use_softmax`` is accepted for the original's calls (see the class)."""
        if in_channels is None:
            return build_decoder(arch, num_class, fc_dim=fc_dim, weights=weights,
                                 norm_layer=norm_layer)
        check_fc_dim(fc_dim, in_channels, "in_channels")
        return build_decoder(arch, num_class, in_channels=in_channels, weights=weights,
                             norm_layer=norm_layer)
