"""Data pipeline: ``.odgt`` lists, datasets, the training loader, synthetic data, checks.

Public API::

    from mit_semseg.data import TrainDataset, ValDataset, TestDataset, build_train_loader

The names are imported from their modules on first use. Importing every submodule here would
make ``python -m mit_semseg.data.odgt`` (and the other command-line modules) load its own module
twice, once as a submodule and once as ``__main__``, which runpy warns about.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> submodule that defines it
_EXPORTS = {
    "BaseDataset": "datasets",
    "TestDataset": "datasets",
    "TrainDataset": "datasets",
    "ValDataset": "datasets",
    "TrainSampler": "loader",
    "build_train_loader": "loader",
    "worker_init_fn": "loader",
    "OdgtError": "odgt",
    "build_odgt": "odgt",
    "list_images": "odgt",
    "read_odgt": "odgt",
    "write_odgt": "odgt",
    "dataset_palette": "palette",
    "ImageReadError": "image_io",
    "ImageTooLargeError": "image_io",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
