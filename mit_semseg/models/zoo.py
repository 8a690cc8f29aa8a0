"""The ADE20K models released with the original package, fetched and cached on first use.

One table, :data:`MODELS`, describes every released model: architecture, training epochs,
config file and the published ADE20K validation scores (source: the README of
CSAILVision/semantic-segmentation-pytorch, commit 8f27c9b; single-scale and multi-scale).
The files live at ``<base>/<name>/{encoder,decoder}_epoch_<N>.pth`` with
``base = http://sceneparsing.csail.mit.edu/model/pytorch``; ``$MIT_SEMSEG_MODEL_MIRROR`` (or the
``mirror`` argument) replaces the base with a mirror holding the same layout.

:func:`fetch` puts the two files in ``<cache_root()>/models/<name>/`` (see
:mod:`mit_semseg.download`: progress bar, kept only if they load as the model's weights, SHA-256
recorded then and compared on every later use), a folder
laid out like a training run, so ``DIR``-style loaders read it as it is.
:func:`from_pretrained` returns the ready model::

    model = mit_semseg.models.from_pretrained("ade20k-resnet50dilated-ppm_deepsup")
    probs = model.predict(images, seg_size=images.shape[-2:])   # (B, 150, H, W)
    model.class_names[k], model.palette[k]                       # name and RGB colour of class k

The original's README also lists MobileNetV2dilated + PPM_deepsup, but no files were released
for it, so it is not here.

A mirror may also hold models of other classes that are not in the table: a training run
published by copying four files of its ``DIR`` to ``<mirror>/<name>/``: ``config.yaml``
(architecture, classes, schedule), ``object_info.csv`` (class names and colours) and the last
epoch's ``encoder_epoch_<N>.pth`` / ``decoder_epoch_<N>.pth`` (``N = TRAIN.num_epoch``).
:func:`fetch_run` copies them into the cache, a folder that is itself a run folder; it is what
``MODEL.init_from <name>`` fine-tunes from (:mod:`mit_semseg.models.init_from`).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ConfigError, load_config
from ..download import DownloadError, cache_root, cached_download
from .builder import build_segmentation_model
from .checkpoint_format import read_state_dict, state_dict_mismatch
from .classes import CLASS_TABLE, ade_palette, class_names
from .segmentation_module import SegmentationModule

__all__ = [
    "BASE_URL",
    "ENV_MIRROR",
    "MODELS",
    "PretrainedModel",
    "Scores",
    "build_model",
    "fetch",
    "fetch_run",
    "find_model",
    "from_pretrained",
    "get_model",
    "list_models",
    "models_dir",
]

BASE_URL = "http://sceneparsing.csail.mit.edu/model/pytorch"
ENV_MIRROR = "MIT_SEMSEG_MODEL_MIRROR"


@dataclass(frozen=True)
class Scores:
    """Published ADE20K validation scores, in percent."""

    miou: float
    pixel_acc: float


@dataclass(frozen=True)
class PretrainedModel:
    """One released model.

    Attributes:
        name: the original's folder name on the server, e.g. ``ade20k-resnet50dilated-ppm_deepsup``.
        arch_encoder, arch_decoder, fc_dim: the ``MODEL`` keys it was trained with.
        epoch: the released checkpoint (``encoder_epoch_<epoch>.pth``).
        config: stem of the matching ``config/<config>.yaml``.
        single_scale, multi_scale: published scores, single-scale and multi-scale testing.
        num_class: number of classes (ADE20K's 150).
    """

    name: str
    arch_encoder: str
    arch_decoder: str
    fc_dim: int
    epoch: int
    config: str
    single_scale: Scores
    multi_scale: Scores
    num_class: int = 150

    @property
    def checkpoint(self) -> str:
        """The suffix the scripts take (``VAL.checkpoint`` / ``TEST.checkpoint``)."""
        return f"epoch_{self.epoch}.pth"

    @property
    def hub_name(self) -> str:
        """The name as a Python identifier (the torch.hub entry point)."""
        return self.name.replace("-", "_")

    def file_names(self) -> tuple[str, str]:
        """``(encoder_epoch_N.pth, decoder_epoch_N.pth)``."""
        return f"encoder_{self.checkpoint}", f"decoder_{self.checkpoint}"

    def urls(self, mirror: str | None = None) -> tuple[str, str]:
        """Encoder and decoder URLs under ``mirror``, ``$MIT_SEMSEG_MODEL_MIRROR`` or
        :data:`BASE_URL`."""
        base = (mirror or os.environ.get(ENV_MIRROR) or BASE_URL).rstrip("/")
        encoder, decoder = self.file_names()
        return f"{base}/{self.name}/{encoder}", f"{base}/{self.name}/{decoder}"

    def config_opts(self) -> list[str]:
        """``KEY VALUE`` overrides that make any config describe this model (for
        ``cfg.merge_from_list``)."""
        return ["MODEL.arch_encoder", self.arch_encoder, "MODEL.arch_decoder", self.arch_decoder,
                "MODEL.fc_dim", str(self.fc_dim), "DATASET.num_class", str(self.num_class)]


def _model(name: str, encoder: str, decoder: str, fc_dim: int, epoch: int, config: str,
           single: tuple[float, float], multi: tuple[float, float]) -> PretrainedModel:
    return PretrainedModel(name, encoder, decoder, fc_dim, epoch, config, Scores(*single),
                           Scores(*multi))


# (mIoU, pixel accuracy) single-scale and multi-scale, from the original README's table.
# ResNet18dilated + C1_deepsup was released without a config of its own; it was trained like
# ResNet18dilated + PPM_deepsup, whose config (data and test settings) it therefore uses.
MODELS: dict[str, PretrainedModel] = {m.name: m for m in (
    _model("ade20k-mobilenetv2dilated-c1_deepsup", "mobilenetv2dilated", "c1_deepsup", 320, 20,
           "ade20k-mobilenetv2dilated-c1_deepsup", (34.84, 75.75), (33.84, 76.80)),
    _model("ade20k-resnet18dilated-c1_deepsup", "resnet18dilated", "c1_deepsup", 512, 20,
           "ade20k-resnet18dilated-ppm_deepsup", (33.82, 76.05), (35.34, 77.41)),
    _model("ade20k-resnet18dilated-ppm_deepsup", "resnet18dilated", "ppm_deepsup", 512, 20,
           "ade20k-resnet18dilated-ppm_deepsup", (38.00, 78.64), (38.81, 79.29)),
    _model("ade20k-resnet50dilated-ppm_deepsup", "resnet50dilated", "ppm_deepsup", 2048, 20,
           "ade20k-resnet50dilated-ppm_deepsup", (41.26, 79.73), (42.14, 80.13)),
    _model("ade20k-resnet101dilated-ppm_deepsup", "resnet101dilated", "ppm_deepsup", 2048, 25,
           "ade20k-resnet101dilated-ppm_deepsup", (42.19, 80.59), (42.53, 80.91)),
    _model("ade20k-resnet50-upernet", "resnet50", "upernet", 2048, 30,
           "ade20k-resnet50-upernet", (40.44, 79.80), (41.55, 80.23)),
    _model("ade20k-resnet101-upernet", "resnet101", "upernet", 2048, 50,
           "ade20k-resnet101-upernet", (42.00, 80.79), (42.66, 81.01)),
    _model("ade20k-hrnetv2-c1", "hrnetv2", "c1", 720, 30,
           "ade20k-hrnetv2", (42.03, 80.77), (43.20, 81.47)),
)}


def list_models() -> list[str]:
    """Names accepted by :func:`get_model`, :func:`fetch` and :func:`from_pretrained`."""
    return list(MODELS)


def get_model(name: str) -> PretrainedModel:
    """The table entry of ``name`` (``-`` and ``_`` are interchangeable, case is ignored).

    Raises:
        KeyError: unknown name; the message lists the valid names.
    """
    def key(text: str) -> str:
        return text.lower().replace("_", "-")

    by_key = {key(n): m for n, m in MODELS.items()}
    if key(name) in by_key:
        return by_key[key(name)]
    close = difflib.get_close_matches(key(name), list(by_key), n=1)
    hint = f" (did you mean {by_key[close[0]].name!r}?)" if close else ""
    raise KeyError(f"unknown pretrained model {name!r}{hint}; valid names: "
                   f"{', '.join(MODELS)}")


def find_model(arch_encoder: str, arch_decoder: str) -> PretrainedModel | None:
    """The released model with this architecture, or None (each pair was released once)."""
    for model in MODELS.values():
        if (model.arch_encoder, model.arch_decoder) == (arch_encoder.lower(),
                                                        arch_decoder.lower()):
            return model
    return None


def models_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder holding one sub-folder per fetched model: ``cache_dir``, else
    ``<cache_root()>/models``."""
    return Path(cache_dir) if cache_dir else cache_root() / "models"


def fetch(name: str, *, cache_dir: str | os.PathLike | None = None, mirror: str | None = None,
          progress: bool = True) -> tuple[Path, Path]:
    """The encoder and decoder files of ``name``, downloaded into the cache when missing.

    Args:
        name: a released model (see :func:`list_models`).
        cache_dir: folder for the model sub-folders (see :func:`models_dir`).
        mirror: base URL replacing :data:`BASE_URL` (default ``$MIT_SEMSEG_MODEL_MIRROR``).
        progress: show progress bars while downloading.

    Returns:
        ``(encoder_path, decoder_path)``, both in ``<models_dir>/<name>/``.

    Raises:
        KeyError: unknown name.
        mit_semseg.download.DownloadError: a file cannot be downloaded, fails its SHA-256
            check or holds no weights of this model (it is not kept); one line naming both
            URLs and the folder to put the files in (``summary``: the file names and the
            folder, no URL).
    """
    model = get_model(name)
    folder = models_dir(cache_dir) / model.name
    urls, names = model.urls(mirror), model.file_names()
    try:
        return tuple(cached_download(url, folder / file_name, progress=progress,
                                     check=_weights_check(model, part))
                     for url, file_name, part in zip(urls, names, ("encoder", "decoder")))
    except DownloadError as error:
        raise DownloadError(
            f"cannot fetch pretrained model {model.name}: {error}. Offline, download "
            f"{urls[0]} and {urls[1]} elsewhere and put both files in {folder.resolve()}/ "
            f"(or set {ENV_MIRROR} to a mirror with the same layout)",
            summary=f"released model {model.name}: {error.summary}; put {names[0]} and "
                    f"{names[1]} in {folder.resolve()}/ or set {ENV_MIRROR} (--verbose: the "
                    "URLs and the error)",
        ) from error


def _weights_check(model: PretrainedModel, part: str) -> Callable[[Path], None]:
    """Raises RuntimeError unless a file holds weights for ``part`` ("encoder" or "decoder")
    of ``model``: a cut download, or another model's file, is never trusted."""
    def check(path: Path) -> None:
        with torch.device("meta"):  # shapes only: no memory, no time spent on weights
            skeleton = getattr(build_model(model.name), part)
        mismatch = state_dict_mismatch(skeleton, read_state_dict(path, f"{part} weights"))
        if mismatch:
            raise RuntimeError(f"{path} holds no {part} of {model.name}: {mismatch.describe()}")
    return check


_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def fetch_run(name: str, *, mirror: str | None = None, cache_dir: str | os.PathLike | None = None,
              progress: bool = True) -> Path:
    """A training run published on a mirror (see the module docstring), copied into the cache.

    Args:
        name: its folder on the mirror (letters, digits, ``.``, ``_``, ``-``).
        mirror: base URL (default ``$MIT_SEMSEG_MODEL_MIRROR``; the original's server holds
            no such runs, so one of the two is needed).
        cache_dir: see :func:`fetch`.
        progress: show progress bars while downloading.

    Returns:
        ``<models_dir>/<name>/``, holding ``config.yaml``, ``object_info.csv`` and the last
        epoch's two weight files, like a training run's ``DIR``.

    Raises:
        ValueError: no mirror, a name that is not a plain folder name, or a ``config.yaml``
            that is not a config.
        mit_semseg.download.DownloadError: a file is missing on the mirror or fails its
            SHA-256 check; one line naming the URL.
    """
    base = (mirror or os.environ.get(ENV_MIRROR) or "").rstrip("/")
    if not base:
        raise ValueError(f"{name!r} is not a released model and no mirror is set: publish the "
                         f"run on a mirror and set {ENV_MIRROR}, or give the run's folder")
    if not _RUN_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a folder name on a mirror (letters, digits, '.', "
                         "'_', '-')")
    folder = models_dir(cache_dir) / name

    def get(file_name: str) -> Path:
        # weights are trusted once they load (a cut download is not); the rest is text
        readable = (lambda path: read_state_dict(path, file_name)) if file_name.endswith(
            ".pth") else None
        return cached_download(f"{base}/{name}/{file_name}", folder / file_name,
                               check=readable, progress=progress)

    config = get("config.yaml")
    try:
        epochs = load_config(config).TRAIN.num_epoch
    except ConfigError as error:
        raise ValueError(f"{base}/{name}/config.yaml is not a training run's config: "
                         f"{error}") from None
    for file_name in (CLASS_TABLE, f"encoder_epoch_{epochs}.pth", f"decoder_epoch_{epochs}.pth"):
        get(file_name)
    return folder


def _with_classes(module: SegmentationModule, model: PretrainedModel) -> SegmentationModule:
    module.class_names = class_names()[: model.num_class]
    module.palette = ade_palette(model.num_class)
    return module


def build_model(name: str) -> SegmentationModule:
    """The architecture of ``name`` with random weights (for training or fine-tuning), with
    ``class_names`` and ``palette`` attributes like :func:`from_pretrained`'s."""
    model = get_model(name)
    module = build_segmentation_model(model.arch_encoder, model.arch_decoder, model.num_class,
                                      fc_dim=model.fc_dim)
    return _with_classes(module, model)


def from_pretrained(name: str, *, device: str | torch.device = "cpu",
                    cache_dir: str | os.PathLike | None = None, mirror: str | None = None,
                    progress: bool = True) -> SegmentationModule:
    """A released model, ready to predict: weights fetched (see :func:`fetch`) and loaded
    strictly, in eval mode on ``device``.

    Args:
        name: a released model (see :func:`list_models`).
        device: where to put the model.
        cache_dir: see :func:`fetch`.
        mirror: see :func:`fetch`.
        progress: show progress bars while downloading.

    Returns:
        A :class:`~mit_semseg.models.SegmentationModule`; ``module.predict(images, seg_size)``
        gives class probabilities. It carries ``class_names`` (``list[str]``, class ``k``'s
        name) and ``palette`` (``(num_class, 3)`` uint8 RGB, the standard ADE20K colours).

    Raises:
        KeyError: unknown name.
        mit_semseg.download.DownloadError: see :func:`fetch`.
        RuntimeError: a file does not fit the architecture (names the file).
    """
    model = get_model(name)
    encoder_path, decoder_path = fetch(model.name, cache_dir=cache_dir, mirror=mirror,
                                       progress=progress)
    module = build_segmentation_model(model.arch_encoder, model.arch_decoder, model.num_class,
                                      fc_dim=model.fc_dim, weights_encoder=str(encoder_path),
                                      weights_decoder=str(decoder_path))
    return _with_classes(module, model).to(device).eval()
