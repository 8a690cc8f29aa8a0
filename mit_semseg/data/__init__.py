"""Data pipeline: ``.odgt`` lists, datasets, the training loader, synthetic data, checks.

Public API::

    from mit_semseg.data import TrainDataset, ValDataset, TestDataset, build_train_loader
"""

from mit_semseg.data.datasets import BaseDataset, TestDataset, TrainDataset, ValDataset
from mit_semseg.data.loader import TrainSampler, build_train_loader, worker_init_fn
from mit_semseg.data.odgt import OdgtError, build_odgt, list_images, read_odgt, write_odgt
from mit_semseg.data.palette import ade_palette, class_names, dataset_palette, load_class_info
from mit_semseg.data.transforms import ImageReadError

__all__ = [
    "BaseDataset",
    "ImageReadError",
    "OdgtError",
    "TestDataset",
    "TrainDataset",
    "TrainSampler",
    "ValDataset",
    "ade_palette",
    "build_odgt",
    "build_train_loader",
    "class_names",
    "dataset_palette",
    "list_images",
    "load_class_info",
    "read_odgt",
    "worker_init_fn",
    "write_odgt",
]
