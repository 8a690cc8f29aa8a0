"""The original ``mit_semseg`` 1.0.0's ``mit_semseg.utils`` import path: its public names,
re-exported from where they live now."""

from mit_semseg.cli.common import setup_logger
from mit_semseg.cli.devices import NotSupportedCliException, parse_devices
from mit_semseg.data.odgt import find_recursive
from mit_semseg.metrics import AverageMeter, accuracy, intersectionAndUnion
from mit_semseg.viz import colorEncode

__all__ = [
    "AverageMeter",
    "NotSupportedCliException",
    "accuracy",
    "colorEncode",
    "find_recursive",
    "intersectionAndUnion",
    "parse_devices",
    "setup_logger",
]
