"""The original's ``mit_semseg.utils`` import path (see :mod:`mit_semseg.compat`)."""

from mit_semseg.compat import (  # noqa: F401  (the original's public names)
    AverageMeter,
    NotSupportedCliException,
    accuracy,
    colorEncode,
    find_recursive,
    intersectionAndUnion,
    parse_devices,
    setup_logger,
)
