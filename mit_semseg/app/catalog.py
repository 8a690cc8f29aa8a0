"""The models the page offers: the released ones and the training runs named on the command line.

Each is a :class:`ModelChoice`, made once at start-up from what ``test.py`` would read for it:

* a released model (:mod:`mit_semseg.models.zoo`): its packaged config with the model's keys on
  top, as ``test.py --model NAME`` loads it; the weights are fetched into the cache on first
  use (:meth:`ModelChoice.trained_model`);
* a run folder (``--run DIR``): ``DIR/config.yaml`` (written by ``train.py``) for the
  architecture and the test settings, ``DIR/{encoder,decoder}_epoch_N.pth`` for the weights,
  any of its epochs (the latest by default).

The class names and colours come from the run's own class table (``DIR/object_info.csv``,
written by ``train.py``), else the config's dataset, through the function ``test.py`` calls
(:func:`mit_semseg.data.palette.dataset_classes`). The page knows a model only by its
:attr:`ModelChoice.key`; paths never leave the server.

Two ways to predict, as the page's switch offers them (:data:`MODES`): ``single``, one scale,
the middle of ``DATASET.imgSizes`` (450 px for the ADE20K recipes, the original README's
single-scale setting), and ``multi``, every scale of ``DATASET.imgSizes`` and their horizontal
flips. Either way the labels are ``test.py``'s for the same config with ``DATASET.imgSizes``
set to those scales (``test.py`` does not flip).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mit_semseg.config import load_config
from mit_semseg.data.palette import dataset_classes
from mit_semseg.inference.predict import PredictOptions, Window, window_from
from mit_semseg.inference.trained_model import TrainedModel
from mit_semseg.models import zoo
from mit_semseg.nn.precision import check_amp

__all__ = [
    "MODES",
    "ModelChoice",
    "RunFolderError",
    "released_choices",
    "run_choice",
    "run_choices",
    "run_epochs",
    "single_scale",
]

logger = logging.getLogger(__name__)

# mode -> what the page's switch says
MODES = {"single": "single-scale", "multi": "multi-scale + flip"}

_EPOCH_FILE = re.compile(r"encoder_epoch_(\d+)\.pth")


class RunFolderError(ValueError):
    """A ``--run`` folder that holds no usable training run (the message says why and what to
    pass instead)."""


def single_scale(img_sizes: Sequence[int]) -> int:
    """The scale of the single-scale mode: the middle of ``img_sizes`` (the upper middle for
    an even count)."""
    ordered = sorted(int(s) for s in img_sizes)
    return ordered[len(ordered) // 2]


@dataclass(frozen=True, eq=False)  # compared and hashed by identity (it holds an array)
class ModelChoice:
    """One model of the page's list.

    Attributes:
        key: what the page sends to pick it (a released model's name, or ``run-<i>``).
        label: what the list shows (a released model's or a run folder's name).
        kind: ``"released"`` or ``"run"``.
        arch_encoder, arch_decoder, fc_dim, num_class, fast_inference: the ``MODEL`` keys and
            ``DATASET.num_class`` it is built with.
        class_names: one display name per class.
        palette: ``(num_class, 3)`` uint8 RGB colours.
        img_sizes, img_max_size, padding_constant: the config's ``DATASET`` scaling keys.
        window, amp: ``TEST.window_size``/``TEST.window_stride`` and ``TEST.amp``.
        epochs: the epochs that can be run (a released model has one).
        source: the released model's name, or the run folder (server side only).
    """

    key: str
    label: str
    kind: str
    arch_encoder: str
    arch_decoder: str
    fc_dim: int
    num_class: int
    fast_inference: bool
    class_names: tuple[str, ...]
    palette: np.ndarray
    img_sizes: tuple[int, ...]
    img_max_size: int
    padding_constant: int
    window: Window | None
    amp: str
    epochs: tuple[int, ...]
    source: str

    @property
    def latest_epoch(self) -> int:
        return self.epochs[-1]

    def scales(self, mode: str) -> tuple[int, ...]:
        """The short sides an image is predicted at in ``mode`` (see :data:`MODES`)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        return self.img_sizes if mode == "multi" else (single_scale(self.img_sizes),)

    def dataset_options(self, mode: str) -> dict[str, Any]:
        """The ``DATASET`` keys :class:`~mit_semseg.data.datasets.TestDataset` scales by."""
        return {"imgSizes": self.scales(mode), "imgMaxSize": self.img_max_size,
                "padding_constant": self.padding_constant}

    def predict_options(self, mode: str) -> PredictOptions:
        """How ``mode`` predicts: ``test.py``'s window and precision; flips in ``multi``."""
        self.scales(mode)  # checks the mode
        return PredictOptions(flip=mode == "multi", window=self.window, amp=self.amp)

    def needs_download(self) -> bool:
        """A released model whose files are not in the cache yet."""
        if self.kind != "released":
            return False
        folder = self.download_folder()
        return not all((folder / name).is_file()
                       for name in zoo.get_model(self.source).file_names())

    def download_folder(self) -> Path:
        """Where a released model's files are fetched to."""
        return zoo.models_dir() / self.source

    def trained_model(self, epoch: int) -> TrainedModel:
        """The weights of ``epoch``; a released model's are fetched into the cache first
        (blocking; see :func:`mit_semseg.models.zoo.fetch`).

        Raises:
            ValueError: an epoch this model does not have.
            mit_semseg.download.DownloadError: the released files cannot be fetched (one line
                naming the URLs and the folder to put them in).
        """
        if epoch not in self.epochs:
            raise ValueError(f"{self.label} has no epoch {epoch}; choose one of "
                             f"{', '.join(map(str, self.epochs))}")
        folder = Path(self.source)
        if self.kind == "released":
            folder = zoo.fetch(self.source)[0].parent
        return TrainedModel(self.arch_encoder, self.arch_decoder, self.num_class, folder,
                            f"epoch_{epoch}.pth", fc_dim=self.fc_dim,
                            fast_inference=self.fast_inference)


def _choice(cfg: Any, key: str, label: str, kind: str, epochs: Sequence[int], source: str
            ) -> ModelChoice:
    num_class = cfg.DATASET.num_class
    classes = dataset_classes(num_class, cfg.DATASET.root_dataset,
                              source if kind == "run" else None)
    return ModelChoice(
        key=key, label=label, kind=kind,
        arch_encoder=cfg.MODEL.arch_encoder, arch_decoder=cfg.MODEL.arch_decoder,
        fc_dim=cfg.MODEL.fc_dim, num_class=num_class, fast_inference=cfg.MODEL.fast_inference,
        class_names=tuple(classes.names), palette=classes.palette,
        img_sizes=tuple(int(s) for s in cfg.DATASET.imgSizes),
        img_max_size=cfg.DATASET.imgMaxSize, padding_constant=cfg.DATASET.padding_constant,
        window=window_from(cfg.TEST.window_size, cfg.TEST.window_stride), amp=cfg.TEST.amp,
        epochs=tuple(epochs), source=source,
    )


def released_choices() -> list[ModelChoice]:
    """Every released model, with the config ``test.py --model NAME`` runs it with."""
    choices = []
    for release in zoo.MODELS.values():
        cfg = load_config(release.config, release.config_opts())
        choices.append(_choice(cfg, release.name, release.name, "released", [release.epoch],
                               release.name))
    return choices


def run_epochs(run_dir: str | Path) -> list[int]:
    """The epochs ``run_dir`` holds both weight files of, in order."""
    folder = Path(run_dir)
    epochs = []
    for path in folder.glob("encoder_epoch_*.pth"):
        match = _EPOCH_FILE.fullmatch(path.name)
        if match and (folder / f"decoder_epoch_{match.group(1)}.pth").is_file():
            epochs.append(int(match.group(1)))
    return sorted(epochs)


def run_choice(run_dir: str | Path, key: str, device: torch.device, label: str | None = None
               ) -> ModelChoice:
    """The training run in ``run_dir``, for the page's list, labelled ``label`` (default: the
    folder's name).

    Raises:
        RunFolderError: no such folder, no ``config.yaml``, no epoch with both weight files,
            a ``TEST.amp`` that cannot run on ``device``.
        ConfigError: ``config.yaml`` is not a valid config (the message names the key).
    """
    folder = Path(run_dir)
    if not folder.is_dir():
        raise RunFolderError(f"--run {run_dir}: no such folder (pass the DIR of a training "
                             "run, the folder with its encoder_epoch_N.pth files)")
    config = folder / "config.yaml"
    if not config.is_file():
        raise RunFolderError(f"--run {run_dir}: no config.yaml in it (train.py writes one into "
                             "DIR; pass the DIR of a training run)")
    epochs = run_epochs(folder)
    if not epochs:
        raise RunFolderError(f"--run {run_dir}: no encoder_epoch_N.pth with its "
                             "decoder_epoch_N.pth (has the run finished an epoch?)")
    cfg = load_config(config)
    try:
        check_amp(cfg.TEST.amp, device, f"{config}: TEST.amp")
    except ValueError as error:
        raise RunFolderError(str(error)) from None
    if cfg.MODEL.backend != "torch":
        logger.warning("%s: MODEL.backend %s; the app runs the torch backend (its labels may "
                       "differ from test.py's by float rounding)", config, cfg.MODEL.backend)
    return _choice(cfg, key, label or folder.resolve().name, "run", epochs, str(folder))


def run_choices(run_dirs: Sequence[str | Path], device: torch.device) -> list[ModelChoice]:
    """The runs of ``--run``, keyed ``run-1``, ``run-2``, ... in order, each labelled by its
    folder's name (with its parent's, where two names are the same).

    Raises:
        RunFolderError, ConfigError: see :func:`run_choice`.
    """
    folders = [Path(d).resolve() for d in run_dirs]
    names = [f.name for f in folders]
    labels = [f"{f.parent.name}/{f.name}" if names.count(f.name) > 1 else f.name
              for f in folders]
    return [run_choice(d, f"run-{i}", device, label)
            for i, (d, label) in enumerate(zip(run_dirs, labels), 1)]
