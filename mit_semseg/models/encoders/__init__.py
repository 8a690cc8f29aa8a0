"""Encoders; importing this package registers every one of them in ``ENCODERS``."""

from . import hrnet, mobilenet, resnet  # noqa: F401  (registration)
from .hrnet import HRNetV2Encoder
from .mobilenet import MobileNetV2Encoder
from .resnet import ResNetEncoder

__all__ = ["HRNetV2Encoder", "MobileNetV2Encoder", "ResNetEncoder"]
