"""The one place a segmentation model is assembled, and where encoder and decoder widths meet.

:func:`build_segmentation_model` is what training, inference, the model zoo and the tests
use; :func:`build_encoder` and :func:`build_decoder` build the parts through the registries.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
import torch.nn as nn

from mit_semseg.nn.deterministic_ops import NLLLoss

from .checkpoint_format import load_weights
from .layers import NormLayer
from .pretrained import load_pretrained
from .registry import DECODERS, ENCODERS
from .segmentation_module import SegmentationModule

__all__ = [
    "list_encoders",
    "list_decoders",
    "check_fc_dim",
    "build_encoder",
    "build_decoder",
    "build_segmentation_model",
]

logger = logging.getLogger(__name__)


def list_encoders() -> list[str]:
    """Names accepted by :func:`build_encoder`."""
    return ENCODERS.names()


def list_decoders() -> list[str]:
    """Names accepted by :func:`build_decoder`."""
    return DECODERS.names()


def check_fc_dim(fc_dim: int | None, widths: Sequence[int], source: str) -> None:
    """Refuse an ``fc_dim`` (``MODEL.fc_dim``) that is not the last encoder width.

    Args:
        fc_dim: the value to check; ``None`` passes.
        widths: the encoder's ``out_channels``.
        source: where ``widths`` come from, for the message (e.g. "encoder 'resnet18'").

    Raises:
        ValueError: naming the key and the value that fits.
    """
    if fc_dim is not None and int(fc_dim) != widths[-1]:
        raise ValueError(
            f"MODEL.fc_dim={fc_dim} but {source} ends with {widths[-1]} channels "
            f"(out_channels {list(widths)}); set MODEL.fc_dim to {widths[-1]}"
        )


def build_encoder(arch: str, *, fc_dim: int | None = None, weights: str = "",
                  pretrained: bool = False, norm_layer: NormLayer = nn.BatchNorm2d,
                  output_stride: int | None = None,
                  pretrained_dir: str | os.PathLike | None = None) -> nn.Module:
    """Build a registered encoder.

    Args:
        arch: encoder name (see :func:`list_encoders`), case-insensitive.
        fc_dim: if given (``MODEL.fc_dim``), must equal the last width; checked before any
            weights are read.
        weights: state-dict file to load (strict); empty for none.
        pretrained: load the original's ImageNet weights when no ``weights`` file is given.
        norm_layer: normalisation layer constructor.
        output_stride: override the name's output stride (8, 16 or 32).
        pretrained_dir: folder of the ImageNet weight files (see ``pretrained.pretrained_dir``).

    Returns:
        The encoder, with ``out_channels`` and ``strides``.

    Raises:
        ValueError: ``fc_dim`` does not match the encoder.
    """
    kwargs = {"norm_layer": norm_layer}
    if output_stride is not None:
        kwargs["output_stride"] = output_stride
    encoder = ENCODERS.build(arch, **kwargs)
    check_fc_dim(fc_dim, encoder.out_channels, f"encoder {arch!r}")
    if weights:
        load_weights(encoder, weights, what=f"{arch} encoder weights")
    elif pretrained:
        load_pretrained(encoder, model_dir=pretrained_dir)
    else:
        logger.info("encoder %s randomly initialised (no weights, pretrained=False)", arch)
    return encoder


def build_decoder(arch: str, num_class: int, *, in_channels: Sequence[int] | None = None,
                  fc_dim: int | None = None, weights: str = "",
                  norm_layer: NormLayer = nn.BatchNorm2d) -> nn.Module:
    """Build a registered decoder.

    Args:
        arch: decoder name (see :func:`list_decoders`), case-insensitive.
        num_class: number of classes.
        in_channels: the encoder's ``out_channels``.
        fc_dim: instead of ``in_channels``, the original's layout (the widths the original's
            decoder assumed from the last width alone; what its checkpoints hold).
        weights: state-dict file to load (strict); empty for none.
        norm_layer: normalisation layer constructor.
    """
    # Only the width arguments given are passed, so a new decoder needs no fc_dim parameter.
    widths = {key: value for key, value in (("in_channels", in_channels), ("fc_dim", fc_dim))
              if value is not None}
    decoder = DECODERS.build(arch, num_class=num_class, norm_layer=norm_layer, **widths)
    if weights:
        load_weights(decoder, weights, what=f"{arch} decoder weights")
    return decoder


def build_segmentation_model(arch_encoder: str, arch_decoder: str, num_class: int, *,
                             fc_dim: int | None = None, weights_encoder: str = "",
                             weights_decoder: str = "", pretrained: bool = False,
                             deep_sup_scale: float = 0.4,
                             norm_layer: NormLayer = nn.BatchNorm2d,
                             class_weights: Sequence[float] = (),
                             factored_heads: bool = True) -> SegmentationModule:
    """Encoder + decoder (widths taken from the encoder) + ``NLLLoss(ignore_index=-1)``.

    Args:
        arch_encoder: encoder name (``MODEL.arch_encoder``).
        arch_decoder: decoder name (``MODEL.arch_decoder``).
        num_class: number of classes.
        fc_dim: if given (``MODEL.fc_dim``), must equal the encoder's last width.
        weights_encoder: encoder state-dict file, or empty.
        weights_decoder: decoder state-dict file, or empty.
        pretrained: ImageNet weights for the encoder when no ``weights_encoder`` is given.
        deep_sup_scale: weight of the auxiliary loss; used when the decoder has deep
            supervision (``*_deepsup``).
        norm_layer: normalisation layer constructor for both parts.
        class_weights: the loss weight of each class (``TRAIN.class_weights``); empty for
            equal weights.
        factored_heads: PPM and UPerNet decoders train their fusion convolution in the
            factored form (``TRAIN.factored_heads``; their ``factored_training``, see
            :mod:`mit_semseg.models.decoders.factored`): fewer FLOPs, the same weights and
            checkpoints. ``False`` trains with the original's arithmetic. Other decoders
            ignore it; inference is unaffected.

    Raises:
        ValueError: ``fc_dim`` does not match the encoder, or ``class_weights`` does not
            have ``num_class`` entries.
    """
    if class_weights and len(class_weights) != num_class:
        raise ValueError(f"TRAIN.class_weights has {len(class_weights)} entries but there are "
                         f"{num_class} classes (DATASET.num_class)")
    encoder = build_encoder(arch_encoder, fc_dim=fc_dim, weights=weights_encoder,
                            pretrained=pretrained, norm_layer=norm_layer)
    decoder = build_decoder(arch_decoder, num_class, in_channels=encoder.out_channels,
                            weights=weights_decoder, norm_layer=norm_layer)
    if hasattr(decoder, "factored_training"):
        decoder.factored_training = bool(factored_heads)
    weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
    return SegmentationModule(encoder, decoder, NLLLoss(ignore_index=-1, weight=weight),
                              deep_sup_scale=deep_sup_scale)
