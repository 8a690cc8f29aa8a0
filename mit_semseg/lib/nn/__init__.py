"""The original package's import path for :mod:`mit_semseg.nn` (``from mit_semseg.lib.nn import
SynchronizedBatchNorm2d, user_scattered_collate``); new code imports :mod:`mit_semseg.nn`."""

from mit_semseg.data.loader import user_scattered_collate
from mit_semseg.nn import *  # noqa: F403
from mit_semseg.nn import __all__ as _nn_names

__all__ = [*_nn_names, "user_scattered_collate"]
