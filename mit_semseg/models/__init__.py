"""Segmentation models: encoders, decoders, the training/inference wrapper and the builder.

Importing this package registers every encoder and decoder, so ``list_encoders()`` and
``list_decoders()`` are complete. ``ModelBuilder`` is the original's interface
(:mod:`mit_semseg.models.legacy`).
"""

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
from .legacy import ModelBuilder
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

