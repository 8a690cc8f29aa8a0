"""Names kept only for code written against the original ``mit_semseg`` 1.0.0.

The original's modules ``mit_semseg.utils`` and ``mit_semseg.dataset`` re-export what they
exported from here; nothing else in the package imports this module. Names that the package
uses itself live in their own modules and are re-exported below; the rest is defined here.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from typing import Any

from mit_semseg.cli.common import setup_logging
from mit_semseg.cli.devices import NotSupportedCliException, parse_devices
from mit_semseg.data.datasets import BaseDataset, TestDataset, TrainDataset, ValDataset
from mit_semseg.metrics import accuracy, intersectionAndUnion
from mit_semseg.visualize import colorEncode

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
