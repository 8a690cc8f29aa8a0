"""ImageNet-pretrained encoder weights (the original's files), from a local folder or a URL.

Files are looked up in a folder (argument ``model_dir``, else the environment variable
``MIT_SEMSEG_PRETRAINED_DIR``, else ``pretrained/`` in the per-user cache of
:func:`mit_semseg.download.cache_root`, e.g. ``~/.cache/torch/mit_semseg/pretrained``) and
downloaded from ``http://sceneparsing.csail.mit.edu/model/pretrained_resnet/<file>`` when
missing, through :func:`mit_semseg.download.cached_download`: renamed into place and its SHA-256
recorded only once it fits the encoder, and checked on every load against that digest (or one
the user supplies).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch.nn as nn

from ..download import DownloadError, cache_root, cached_download
from .checkpoint_format import read_state_dict, state_dict_mismatch

__all__ = [
    "PRETRAINED_URL",
    "PRETRAINED_FILES",
    "pretrained_dir",
    "pretrained_url",
    "load_pretrained",
]

logger = logging.getLogger(__name__)

PRETRAINED_URL = "http://sceneparsing.csail.mit.edu/model/pretrained_resnet/{}"
ENV_DIR = "MIT_SEMSEG_PRETRAINED_DIR"

# family (an encoder's ``pretrained_name``) -> the original's file name
PRETRAINED_FILES = {
    "resnet18": "resnet18-imagenet.pth",
    "resnet50": "resnet50-imagenet.pth",
    "resnet101": "resnet101-imagenet.pth",
    "resnext101": "resnext101-imagenet.pth",
    "mobilenetv2": "mobilenet_v2.pth.tar",
    "hrnetv2": "hrnetv2_w48-imagenet.pth",
}

# Classifier parts of the ImageNet checkpoints that the encoders do not have.
CLASSIFIER_PREFIXES = {
    "mobilenetv2": ("classifier.", "features.18."),
    # HRNet's ImageNet classification head (HRNet-Image-Classification layout); the original
    # skipped these keys by loading with strict=False.
    "hrnetv2": ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier."),
}
DEFAULT_CLASSIFIER_PREFIXES = ("fc.",)


def pretrained_dir(model_dir: str | os.PathLike | None = None) -> Path:
    """The weights folder: ``model_dir``, else ``$MIT_SEMSEG_PRETRAINED_DIR``, else
    ``<cache_root()>/pretrained``."""
    if model_dir:
        return Path(model_dir)
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    return cache_root() / "pretrained"


def pretrained_url(family: str) -> str:
    """Download URL of ``family``'s ImageNet weights."""
    return PRETRAINED_URL.format(_file_name(family))


def _file_name(family: str) -> str:
    if family not in PRETRAINED_FILES:
        raise KeyError(
            f"no ImageNet weights known for {family!r}; known: {', '.join(PRETRAINED_FILES)}"
        )
    return PRETRAINED_FILES[family]


def load_pretrained(encoder: nn.Module, family: str | None = None, *,
                    model_dir: str | os.PathLike | None = None, url: str | None = None,
                    progress: bool = True) -> nn.Module:
    """Load the original's ImageNet weights into ``encoder`` (in place).

    The classifier entries of the file (``fc.*``; ``classifier.*`` and ``features.18.*`` for
    MobileNetV2; ``incre_modules.*``, ``downsamp_modules.*``, ``final_layer.*`` and
    ``classifier.*`` for HRNetV2) are dropped; everything else must match the encoder exactly.

    Args:
        encoder: an encoder built by this package.
        family: weights family; default ``encoder.pretrained_name``.
        model_dir: cache folder (see :func:`pretrained_dir`).
        url: download URL; default the original's URL for ``family``.
        progress: show a progress bar while downloading.

    Returns:
        ``encoder``.

    Raises:
        mit_semseg.download.DownloadError: the file is missing and cannot be downloaded, its
            SHA-256 differs from the expected one, or a file not yet recorded does not fit
            the encoder (a ``RuntimeError``; one line naming the URL and the path to put the
            file at).
        RuntimeError: the file does not match the encoder.
    """
    family = family or getattr(encoder, "pretrained_name", None)
    if family is None:
        raise ValueError(f"{type(encoder).__name__} has no pretrained_name; pass family=")
    file_name = _file_name(family)
    url = url or PRETRAINED_URL.format(file_name)
    folder = pretrained_dir(model_dir)
    try:
        path = cached_download(url, folder / file_name, progress=progress,
                               check=lambda file: _fitting_state(encoder, family, file))
    except DownloadError as error:
        raise DownloadError(f"{error} (or set {ENV_DIR} to a folder holding {file_name})"
                            ) from error
    # Checked before loading, so that a file that does not fit leaves the encoder untouched.
    encoder.load_state_dict(_fitting_state(encoder, family, path), strict=True)
    logger.info("loaded ImageNet weights for %s from %s", family, path)
    return encoder


def _fitting_state(encoder: nn.Module, family: str, path: Path) -> dict[str, Any]:
    """The file's state dict without the classifier; raises RuntimeError if it does not fit
    ``encoder`` (a truncated download, another network)."""
    ignored = CLASSIFIER_PREFIXES.get(family, DEFAULT_CLASSIFIER_PREFIXES)
    saved = read_state_dict(path, f"{family} ImageNet weights")
    state = {k: v for k, v in saved.items() if not k.startswith(ignored)}
    mismatch = state_dict_mismatch(encoder, state)
    if mismatch:
        raise RuntimeError(f"{path} does not match the {family} encoder: {mismatch.describe()}")
    return state
