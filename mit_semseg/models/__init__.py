"""Segmentation models: encoders, decoders, the training/inference wrapper and the builder.

Importing this package registers every encoder and decoder, so ``list_encoders()`` and
``list_decoders()`` are complete. ``ModelBuilder`` (the original's interface) is served from
:mod:`mit_semseg.compat` on first access.
"""

from typing import Any

from . import decoders, encoders  # noqa: F401  (registration)
from .builder import (
    build_decoder,
    build_encoder,
    build_segmentation_model,
    check_fc_dim,
    list_decoders,
    list_encoders,
)
from .checkpoint_format import attach_upstream_bn_buffers, load_weights
from .pretrained import load_pretrained
from .registry import DECODERS, ENCODERS
from .segmentation_module import SegmentationModule
from .zoo import from_pretrained

__all__ = [
    "DECODERS",
    "ENCODERS",
    "ModelBuilder",
    "SegmentationModule",
    "attach_upstream_bn_buffers",
    "build_decoder",
    "build_encoder",
    "build_segmentation_model",
    "check_fc_dim",
    "from_pretrained",
    "list_decoders",
    "list_encoders",
    "load_pretrained",
    "load_weights",
]


def __getattr__(name: str) -> Any:
    # Loaded lazily so that the package itself never imports the compatibility module.
    if name == "ModelBuilder":
        from ..compat import ModelBuilder

        return ModelBuilder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
