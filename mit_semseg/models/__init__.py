"""Segmentation models: encoders, decoders, the training/inference wrapper and builders.

Importing this package registers every encoder and decoder, so ``list_encoders()`` and
``list_decoders()`` are complete.
"""

from . import decoders, encoders  # noqa: F401  (registration)
from .builder import (
    ModelBuilder,
    build_decoder,
    build_encoder,
    build_segmentation_model,
    list_decoders,
    list_encoders,
    load_weights,
)
from .compat import attach_upstream_bn_buffers
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
    "from_pretrained",
    "list_decoders",
    "list_encoders",
    "load_pretrained",
    "load_weights",
]
