"""Start a model for your classes from one trained for others (``MODEL.init_from``).

The source is a released model (:mod:`mit_semseg.models.zoo`, ADE20K's 150 classes), a
training run's folder (``DIR``), or a run published on the model mirror
(:func:`mit_semseg.models.zoo.fetch_run`). :func:`initialise_from` fills a freshly built model:

* the encoder loads completely (it must be the source's architecture);
* every decoder tensor whose key and shape the source has is loaded; the others keep their
  fresh initialisation (e.g. a deep-supervision head the source did not have);
* the class-score layers (:meth:`~mit_semseg.models.decoders.base.SegmentationDecoder.
  class_score_layers`: the final classifier and the deep-supervision classifier) are tied to
  the classes, so they are never loaded by shape: each of your classes whose name matches a
  class of the source gets that class's rows (weights and bias), the others keep the fresh
  initialisation. Names match case-insensitively, on any synonym (ADE20K's
  ``person;individual;someone;...``), the display names first. So a ``person`` class starts as
  ADE20K's person and predicts it before the first step.

:meth:`InitReport.summary` is the one log line that says what was loaded, what was
re-initialised and which classes were matched to which. Strict loading of ``MODEL.weights_*``
(:func:`~mit_semseg.models.checkpoint_format.load_weights`) is a different thing and unchanged.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..config import ConfigError, load_config
from ..download import DownloadError
from . import zoo
from .checkpoint_format import read_state_dict, required_entries, state_dict_mismatch
from .classes import OBJECT150_CSV, find_class_table, load_class_info

__all__ = [
    "InitReport",
    "InitSource",
    "find_source",
    "initialise_from",
    "match_classes",
    "run_source",
]

logger = logging.getLogger(__name__)

_EPOCH_FILE = re.compile(r"encoder_epoch_(\d+)\.pth")


@dataclass(frozen=True)
class InitSource:
    """A trained model to start from.

    Attributes:
        name: how messages name it (``released model NAME``, ``run folder PATH``).
        encoder_file, decoder_file: its two weight files.
        class_synonyms: per class of the source, its names (display name first).
        arch: ``(arch_encoder, arch_decoder)`` when known (released models, runs with a
            ``config.yaml``), else None.
    """

    name: str
    encoder_file: Path
    decoder_file: Path
    class_synonyms: tuple[tuple[str, ...], ...]
    arch: tuple[str, str] | None = None


def _last_epoch(folder: Path) -> int | None:
    """The highest ``N`` with both ``encoder_epoch_N.pth`` and ``decoder_epoch_N.pth``."""
    epochs = [int(m.group(1)) for m in map(_EPOCH_FILE.fullmatch, os.listdir(folder)) if m]
    complete = [n for n in epochs if (folder / f"decoder_epoch_{n}.pth").is_file()]
    return max(complete, default=None)


def run_source(folder: str | os.PathLike, name: str | None = None) -> InitSource:
    """A training run's folder (``DIR``) as a source: its last complete epoch's weights,
    its ``config.yaml`` (architecture) and its classes (its own ``object_info.csv``, else
    its dataset's, else ADE20K's for 150 classes; without any, no class can match).

    Raises:
        FileNotFoundError: no ``encoder_epoch_N.pth`` with its ``decoder_epoch_N.pth``.
        ValueError: a ``config.yaml`` that is not a config.
    """
    folder = Path(folder)
    epoch = _last_epoch(folder)
    if epoch is None:
        raise FileNotFoundError(f"{folder}: no encoder_epoch_N.pth with its decoder_epoch_N.pth; "
                                "give a training run's DIR (or a released model's name)")
    arch, num_class, root = None, 0, None
    config = folder / "config.yaml"
    if config.is_file():
        try:
            run = load_config(config)
        except ConfigError as error:
            raise ValueError(f"{config} is not a training run's config: {error}") from None
        arch = (run.MODEL.arch_encoder, run.MODEL.arch_decoder)
        num_class, root = run.DATASET.num_class, run.DATASET.root_dataset
    table = find_class_table(num_class, (folder, root))
    synonyms = load_class_info(table)["synonyms"] if table is not None else []
    return InitSource(name or f"run folder {folder} (epoch {epoch})",
                      folder / f"encoder_epoch_{epoch}.pth", folder / f"decoder_epoch_{epoch}.pth",
                      tuple(tuple(s) for s in synonyms), arch)


def find_source(spec: str, *, mirror: str | None = None,
                cache_dir: str | os.PathLike | None = None, progress: bool = True) -> InitSource:
    """What ``MODEL.init_from spec`` names, with its files fetched into the cache if needed.

    ``spec`` is, by the first rule that applies: an existing folder (a training run); the
    name of a released model (:func:`mit_semseg.models.zoo.list_models`); the name of a run
    published on the mirror (``mirror`` or ``$MIT_SEMSEG_MODEL_MIRROR``).

    Raises:
        FileNotFoundError: a path that does not exist, a folder without weights, or an unknown
            name without a mirror to look in (the message lists the released models).
        mit_semseg.download.DownloadError: fetching failed (one line naming the URL; for a
            name that is no released model, also the released models).
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        return run_source(path)
    try:
        release = zoo.get_model(spec)
    except KeyError as unknown:
        if os.sep in spec or "/" in spec or not (mirror or os.environ.get(zoo.ENV_MIRROR)):
            raise FileNotFoundError(f"{spec}: no such run folder, and {unknown.args[0]}; a run "
                                    f"published on a mirror needs ${zoo.ENV_MIRROR}") from None
        try:
            folder = zoo.fetch_run(spec, mirror=mirror, cache_dir=cache_dir, progress=progress)
        except DownloadError as error:
            raise DownloadError(f"{spec}: no such run folder, {unknown.args[0]}, and no run of "
                                f"that name could be fetched from the mirror: {error}") from None
        return run_source(folder, name=f"published run {spec}")
    encoder, decoder = zoo.fetch(release.name, mirror=mirror, cache_dir=cache_dir,
                                 progress=progress)
    synonyms = load_class_info(OBJECT150_CSV)["synonyms"][: release.num_class]
    return InitSource(f"released model {release.name}", encoder, decoder,
                      tuple(tuple(s) for s in synonyms),
                      (release.arch_encoder, release.arch_decoder))


def _name_key(name: str) -> str:
    return " ".join(name.lower().split())


def match_classes(target: Sequence[Sequence[str]], source: Sequence[Sequence[str]]
                  ) -> list[int | None]:
    """For each target class, the source class whose rows it starts from, or None.

    A target class matches the source class whose display name equals its display name;
    else the first source class (in label order) that has one of its names among its
    synonyms, trying the target's names in order. Case and repeated spaces are ignored.
    """
    display: dict[str, int] = {}
    any_name: dict[str, int] = {}
    for index, names in enumerate(source):
        display.setdefault(_name_key(names[0]), index)
        for name in names:
            any_name.setdefault(_name_key(name), index)
    matches: list[int | None] = []
    for names in target:
        keys = [_name_key(n) for n in names]
        found = display.get(keys[0])
        if found is None:
            found = next((any_name[k] for k in keys if k in any_name), None)
        matches.append(found)
    return matches


@dataclass
class InitReport:
    """What :func:`initialise_from` did (see :meth:`summary`)."""

    source: str
    encoder_tensors: int = 0
    decoder_loaded: list[str] = field(default_factory=list)
    decoder_fresh: list[str] = field(default_factory=list)
    class_layers: list[str] = field(default_factory=list)
    num_class: int = 0
    matches: list[tuple[str, str | None]] = field(default_factory=list)

    def summary(self) -> str:
        """One line: loaded, re-initialised, matched."""
        matched = [f"{mine} <- {theirs}" for mine, theirs in self.matches if theirs is not None]
        new = [mine for mine, theirs in self.matches if theirs is None]
        layers = list(dict.fromkeys(key.rsplit(".", 1)[0] for key in self.decoder_fresh))
        fresh = f"; not in the source, freshly initialised: {', '.join(layers)}" if layers else ""
        return (f"MODEL.init_from {self.source}: loaded the encoder ({self.encoder_tensors} "
                f"tensors) and {len(self.decoder_loaded)} decoder tensors; re-initialised for "
                f"{self.num_class} classes: {', '.join(self.class_layers)}{fresh}; classes "
                f"matched ({len(matched)} of {len(self.matches)}): "
                f"{', '.join(matched) or 'none'}; new: {', '.join(new) or 'none'}")


def _load_encoder(encoder: nn.Module, source: InitSource) -> int:
    state = read_state_dict(source.encoder_file, f"{source.name} encoder weights")
    mismatch = state_dict_mismatch(encoder, state)
    if mismatch:
        arch = f" (a {source.arch[0]} encoder)" if source.arch else ""
        first = (mismatch.missing + mismatch.unexpected + list(mismatch.shapes))[0]
        raise ValueError(
            f"{source.encoder_file}{arch} does not fit the model's encoder: "
            f"{len(mismatch.missing)} missing, {len(mismatch.unexpected)} unexpected, "
            f"{len(mismatch.shapes)} mis-shaped key(s), e.g. {first}; set MODEL.arch_encoder "
            "and MODEL.fc_dim to the source model's")
    encoder.load_state_dict(state, strict=True)
    return len(required_entries(state))


def _load_decoder(decoder: nn.Module, state: Mapping[str, torch.Tensor],
                  matches: Sequence[int | None], report: InitReport) -> None:
    own = decoder.state_dict()
    merged = {k: v.clone() for k, v in own.items()}
    class_layers = decoder.class_score_layers()
    class_keys = {f"{prefix}.{p}" for prefix in class_layers for p in ("weight", "bias")}
    for key, value in required_entries(own).items():
        if key in class_keys:
            continue
        if key in state and tuple(state[key].shape) == tuple(value.shape):
            merged[key] = state[key]
            report.decoder_loaded.append(key)
        else:
            report.decoder_fresh.append(key)
    for key in own:  # BatchNorm step counters come with their layer when the source has them
        if key.endswith("num_batches_tracked") and key in state:
            merged[key] = state[key]
    for prefix in class_layers:
        report.class_layers.append(prefix)
        weight, bias = f"{prefix}.weight", f"{prefix}.bias"
        if weight not in state or tuple(state[weight].shape[1:]) != tuple(own[weight].shape[1:]):
            continue  # the source has no such layer (e.g. no deep supervision): all fresh
        for mine, theirs in enumerate(matches):
            if theirs is not None and theirs < state[weight].shape[0]:
                merged[weight][mine] = state[weight][theirs]
                if bias in state and bias in merged:
                    merged[bias][mine] = state[bias][theirs]
    decoder.load_state_dict(merged, strict=True)


def initialise_from(module: nn.Module, source: InitSource,
                    class_synonyms: Sequence[Sequence[str]]) -> InitReport:
    """Load ``source`` into a freshly built ``module`` for the classes ``class_synonyms`` (see
    the module docstring); the summary is logged.

    Args:
        module: a :class:`~mit_semseg.models.SegmentationModule` (``encoder``, ``decoder``)
            with its fresh initialisation.
        source: see :func:`find_source`.
        class_synonyms: the names of each of the model's classes, in label order.

    Raises:
        ValueError: the source's encoder does not fit, or ``class_synonyms`` does not have one
            entry per class of the decoder.
        FileNotFoundError, RuntimeError: a weight file is missing or unreadable (naming it).
    """
    num_class = module.decoder.num_class
    if len(class_synonyms) != num_class:
        raise ValueError(f"{len(class_synonyms)} class names for a decoder of {num_class} "
                         "classes")
    report = InitReport(source.name, num_class=num_class)
    report.encoder_tensors = _load_encoder(module.encoder, source)
    matches = match_classes(class_synonyms, source.class_synonyms)
    decoder_state = read_state_dict(source.decoder_file, f"{source.name} decoder weights")
    _load_decoder(module.decoder, decoder_state, matches, report)
    report.matches = [(names[0], None if m is None else source.class_synonyms[m][0])
                      for names, m in zip(class_synonyms, matches)]
    logger.info("%s", report.summary())
    return report
