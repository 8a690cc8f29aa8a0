"""Decoders; importing this package registers every one of them in ``DECODERS``."""

from . import c1, ppm, upernet  # noqa: F401  (registration)
from .base import SegmentationDecoder
from .c1 import C1
from .ppm import PPM
from .upernet import UPerNet

__all__ = ["C1", "PPM", "SegmentationDecoder", "UPerNet"]
