"""Compatibility path of the original package: ``from mit_semseg.dataset import TestDataset``.

The implementation lives in :mod:`mit_semseg.data`.
"""

from mit_semseg.data.datasets import BaseDataset, TestDataset, TrainDataset, ValDataset

__all__ = ["BaseDataset", "TestDataset", "TrainDataset", "ValDataset"]
