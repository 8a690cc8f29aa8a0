"""Builders over the registries, and the original's ``ModelBuilder`` facade."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Callable

import torch
import torch.nn as nn

from mit_semseg.nn.deterministic import NLLLoss

from .compat import strip_module_prefix
from .pretrained import load_pretrained
from .registry import DECODERS, ENCODERS
from .segmentation_module import SegmentationModule

__all__ = [
    "ModelBuilder",
    "build_encoder",
    "build_decoder",
    "build_segmentation_model",
    "list_encoders",
    "list_decoders",
    "load_weights",
]

logger = logging.getLogger(__name__)

NormLayer = Callable[[int], nn.Module]


def list_encoders() -> list[str]:
    """Names accepted by :func:`build_encoder`."""
    return ENCODERS.names()


def list_decoders() -> list[str]:
    """Names accepted by :func:`build_decoder`."""
    return DECODERS.names()


def load_weights(module: nn.Module, path: str | os.PathLike, what: str = "weights") -> nn.Module:
    """Load a state-dict file into ``module`` strictly (in place).

    Accepts the original's checkpoints (SyncBN extras, missing ``num_batches_tracked``) and
    files saved from a DataParallel/DDP wrapper (``module.`` prefix, stripped and logged).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RuntimeError: the file is unreadable or its keys/shapes do not match; names the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt/foreign files
        raise RuntimeError(f"cannot read {what} file {path}: {error}") from error
    if not isinstance(state, Mapping):
        raise RuntimeError(f"{what} file {path} holds a {type(state).__name__}, not a state dict")
    state = strip_module_prefix(state, path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise RuntimeError(f"{what} file {path} does not fit {type(module).__name__}: {error}"
                           ) from error
    logger.info("loaded %s from %s", what, path)
    return module


def build_encoder(arch: str = "resnet50dilated", fc_dim: int | None = None, weights: str = "",
                  *, pretrained: bool = False, norm_layer: NormLayer = nn.BatchNorm2d,
                  output_stride: int | None = None,
                  pretrained_dir: str | os.PathLike | None = None) -> nn.Module:
    """Build a registered encoder.

    Args:
        arch: encoder name (see :func:`list_encoders`), case-insensitive.
        fc_dim: expected width of the last map; only checked (a warning when it differs).
        weights: state-dict file to load (strict); empty for none.
        pretrained: load the original's ImageNet weights (ignored when ``weights`` is given).
        norm_layer: normalisation layer constructor.
        output_stride: override the name's output stride (8, 16 or 32).
        pretrained_dir: folder of the ImageNet weight files (see ``pretrained.pretrained_dir``).

    Returns:
        The encoder, with ``out_channels`` and ``strides``.
    """
    kwargs = {"norm_layer": norm_layer}
    if output_stride is not None:
        kwargs["output_stride"] = output_stride
    encoder = ENCODERS.build(arch, **kwargs)
    if fc_dim is not None and int(fc_dim) != encoder.out_channels[-1]:
        logger.warning("fc_dim=%s differs from %s's last feature width %d", fc_dim, arch,
                       encoder.out_channels[-1])
    if weights:
        if pretrained:
            logger.info("weights file given, so ImageNet weights are not loaded")
        load_weights(encoder, weights, what=f"{arch} encoder weights")
    elif pretrained:
        load_pretrained(encoder, model_dir=pretrained_dir)
    else:
        logger.info("encoder %s randomly initialised (no weights, pretrained=False)", arch)
    return encoder


def build_decoder(arch: str = "ppm_deepsup", fc_dim: int | None = None, num_class: int = 150,
                  weights: str = "", use_softmax: bool = False, *,
                  norm_layer: NormLayer = nn.BatchNorm2d,
                  in_channels: Sequence[int] | None = None) -> nn.Module:
    """Build a registered decoder.

    Args:
        arch: decoder name (see :func:`list_decoders`), case-insensitive.
        fc_dim: width of the encoder's last map (optional with ``in_channels``).
        num_class: number of classes.
        weights: state-dict file to load (strict); empty for none.
        use_softmax: what the decoder's own ``forward`` returns (probabilities if True).
        norm_layer: normalisation layer constructor.
        in_channels: the encoder's ``out_channels``; without it widths follow the original's
            assumptions from ``fc_dim`` (UPerNet: ResNet-50's).
    """
    decoder = DECODERS.build(arch, num_class=num_class, fc_dim=fc_dim, use_softmax=use_softmax,
                             in_channels=in_channels, norm_layer=norm_layer)
    if weights:
        load_weights(decoder, weights, what=f"{arch} decoder weights")
    return decoder


def build_segmentation_model(arch_encoder: str, arch_decoder: str, num_class: int, *,
                             fc_dim: int | None = None, weights_encoder: str = "",
                             weights_decoder: str = "", pretrained: bool = False,
                             deep_sup_scale: float | None = 0.4,
                             norm_layer: NormLayer = nn.BatchNorm2d,
                             use_softmax: bool = False) -> SegmentationModule:
    """Encoder + decoder (widths taken from the encoder) + ``NLLLoss(ignore_index=-1)``.

    Args:
        arch_encoder: encoder name.
        arch_decoder: decoder name.
        num_class: number of classes.
        fc_dim: if given, must equal the encoder's last width (``MODEL.fc_dim``).
        weights_encoder: encoder state-dict file, or empty.
        weights_decoder: decoder state-dict file, or empty.
        pretrained: ImageNet weights for the encoder when no ``weights_encoder`` is given.
        deep_sup_scale: auxiliary loss weight, used when the decoder has deep supervision.
        norm_layer: normalisation layer constructor for both parts.
        use_softmax: passed to the decoder (affects only its own ``forward``).

    Raises:
        ValueError: ``fc_dim`` does not match the encoder.
    """
    encoder = build_encoder(arch_encoder, weights=weights_encoder,
                            pretrained=pretrained and not weights_encoder, norm_layer=norm_layer)
    widths = encoder.out_channels
    if fc_dim is not None and int(fc_dim) != widths[-1]:
        raise ValueError(
            f"fc_dim={fc_dim} but encoder {arch_encoder!r} ends with {widths[-1]} channels "
            f"(out_channels {widths}); set MODEL.fc_dim to {widths[-1]}"
        )
    decoder = build_decoder(arch_decoder, fc_dim=widths[-1], num_class=num_class,
                            weights=weights_decoder, use_softmax=use_softmax,
                            norm_layer=norm_layer, in_channels=widths)
    deep_sup = deep_sup_scale if getattr(decoder, "deep_sup", False) else None
    return SegmentationModule(encoder, decoder, NLLLoss(ignore_index=-1),
                              deep_sup_scale=deep_sup)


class ModelBuilder:
    """The original's builder interface, kept for compatibility (see the module functions)."""

    @staticmethod
    def weights_init(m: nn.Module) -> None:
        """The original's decoder initialisation, applied to ``m`` and its submodules."""
        from .decoders.blocks import init_decoder_weights

        init_decoder_weights(m)

    @staticmethod
    def build_encoder(arch: str = "resnet50dilated", fc_dim: int = 512, weights: str = "", *,
                      pretrained: bool = False, norm_layer: NormLayer = nn.BatchNorm2d,
                      output_stride: int | None = None) -> nn.Module:
        """See :func:`build_encoder`. Unlike the original, an empty ``weights`` means random
        initialisation unless ``pretrained=True``."""
        return build_encoder(arch, fc_dim, weights, pretrained=pretrained, norm_layer=norm_layer,
                             output_stride=output_stride)

    @staticmethod
    def build_decoder(arch: str = "ppm_deepsup", fc_dim: int | None = 512, num_class: int = 150,
                      weights: str = "", use_softmax: bool = False, *,
                      norm_layer: NormLayer = nn.BatchNorm2d,
                      in_channels: Sequence[int] | None = None) -> nn.Module:
        """See :func:`build_decoder` (pass ``fc_dim=None`` or the matching width together with
        ``in_channels``)."""
        return build_decoder(arch, fc_dim, num_class, weights, use_softmax,
                             norm_layer=norm_layer, in_channels=in_channels)
