"""ImageNet-pretrained encoder weights (the original's files), from a local folder or a URL.

Files are looked up in the cache folder (argument ``model_dir``, else the environment variable
``MIT_SEMSEG_PRETRAINED_DIR``, else ``./pretrained`` as in the original) and downloaded from
``http://sceneparsing.csail.mit.edu/model/pretrained_resnet/<file>`` when missing. A download
goes to ``<file>.part`` and is renamed only when complete, so no partial file is ever left.
"""

from __future__ import annotations

import logging
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .checkpoint_format import key_differences, strip_module_prefix

__all__ = [
    "PRETRAINED_URL",
    "PRETRAINED_FILES",
    "pretrained_dir",
    "pretrained_url",
    "download",
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
    """The cache folder: ``model_dir``, else ``$MIT_SEMSEG_PRETRAINED_DIR``, else ``pretrained``."""
    return Path(model_dir or os.environ.get(ENV_DIR) or "pretrained")


def pretrained_url(family: str) -> str:
    """Download URL of ``family``'s ImageNet weights."""
    return PRETRAINED_URL.format(_file_name(family))


def _file_name(family: str) -> str:
    if family not in PRETRAINED_FILES:
        raise KeyError(
            f"no ImageNet weights known for {family!r}; known: {', '.join(PRETRAINED_FILES)}"
        )
    return PRETRAINED_FILES[family]


def download(url: str, destination: str | os.PathLike, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``destination`` atomically (via ``<destination>.part``).

    Raises:
        RuntimeError: the download failed (e.g. offline); the message names the URL and the
            path where the file can be placed by hand.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    logger.info("downloading %s to %s", url, destination)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out)
        os.replace(partial, destination)
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise RuntimeError(
            f"could not download {url} ({error}); download it elsewhere and place it at "
            f"{destination.resolve()} (or set {ENV_DIR} to the folder holding it)"
        ) from error
    finally:
        if partial.exists():
            partial.unlink()
    return destination


def _read_state_dict(path: Path) -> dict[str, Any]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt/foreign files
        raise RuntimeError(f"{path} is not a readable PyTorch weights file: {error}") from error
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise RuntimeError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    return strip_module_prefix(loaded, str(path))


def load_pretrained(encoder: nn.Module, family: str | None = None, *,
                    model_dir: str | os.PathLike | None = None, url: str | None = None,
                    ) -> nn.Module:
    """Load the original's ImageNet weights into ``encoder`` (in place).

    The classifier entries of the file (``fc.*``; ``classifier.*`` and ``features.18.*`` for
    MobileNetV2; ``incre_modules.*``, ``downsamp_modules.*``, ``final_layer.*`` and
    ``classifier.*`` for HRNetV2) are dropped; everything else must match the encoder exactly.

    Args:
        encoder: an encoder built by this package.
        family: weights family; default ``encoder.pretrained_name``.
        model_dir: cache folder (see :func:`pretrained_dir`).
        url: download URL; default the original's URL for ``family``.

    Returns:
        ``encoder``.

    Raises:
        RuntimeError: the file is missing and cannot be downloaded, or does not match.
    """
    family = family or getattr(encoder, "pretrained_name", None)
    if family is None:
        raise ValueError(f"{type(encoder).__name__} has no pretrained_name; pass family=")
    file_name = _file_name(family)
    url = url or PRETRAINED_URL.format(file_name)
    path = pretrained_dir(model_dir) / file_name
    if not path.is_file():
        download(url, path)
    state = _read_state_dict(path)
    ignored = CLASSIFIER_PREFIXES.get(family, DEFAULT_CLASSIFIER_PREFIXES)
    state = {k: v for k, v in state.items() if not k.startswith(ignored)}
    missing, unexpected = key_differences(encoder, state)
    own = encoder.state_dict()
    resized = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
               if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or resized:
        # Checked before loading so that a mismatching file leaves the encoder untouched.
        raise RuntimeError(
            f"{path} does not match the {family} encoder: missing keys {_preview(missing)}, "
            f"unexpected keys {_preview(unexpected)}, shape mismatches {_preview(resized)}"
        )
    encoder.load_state_dict(state, strict=True)
    logger.info("loaded ImageNet weights for %s from %s", family, path)
    return encoder


def _preview(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    more = f" ... ({len(keys)} in all)" if len(keys) > limit else ""
    return f"[{shown}{more}]"
