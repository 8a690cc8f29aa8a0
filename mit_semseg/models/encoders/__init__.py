"""Encoders; importing this package registers every one of them in ``ENCODERS``."""

from . import mobilenet, resnet  # noqa: F401  (registration)
from .mobilenet import MobileNetV2Encoder
from .resnet import ResNetEncoder

__all__ = ["MobileNetV2Encoder", "ResNetEncoder"]
