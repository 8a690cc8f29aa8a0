"""The original package's import path for :mod:`mit_semseg.nn` (``from mit_semseg.lib.nn import
SynchronizedBatchNorm2d, user_scattered_collate``); new code imports :mod:`mit_semseg.nn`."""

from mit_semseg.nn import *  # noqa: F403
from mit_semseg.nn import __all__  # noqa: F401
