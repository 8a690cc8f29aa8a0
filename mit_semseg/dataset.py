"""The original's ``mit_semseg.dataset`` import path (see :mod:`mit_semseg.compat`)."""

from mit_semseg.compat import BaseDataset, TestDataset, TrainDataset, ValDataset  # noqa: F401
