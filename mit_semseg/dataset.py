"""The original ``mit_semseg`` 1.0.0's ``mit_semseg.dataset`` import path."""

from mit_semseg.data.datasets import BaseDataset, TestDataset, TrainDataset, ValDataset

__all__ = ["BaseDataset", "TestDataset", "TrainDataset", "ValDataset"]
