"""Name -> builder registries for encoders and decoders.

Architecture names are data: each registry maps a name (the original's arch strings such as
``resnet50dilated`` or ``ppm_deepsup``, plus our additions) to a callable that builds the module.
Building through a registry is what makes a module a model part of this package: the built
module must declare the facts the rest of the package relies on (an encoder its
``out_channels`` and ``strides``, a decoder its ``in_channels``, ``deep_sup`` and
``output_index``), and it gets the original's checkpoint layout
(:func:`~mit_semseg.models.checkpoint_format.attach_upstream_bn_buffers`), so a new encoder or
decoder cannot forget either. Looking up an unknown name raises a ``KeyError`` that lists every
valid name.
"""

from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

from .checkpoint_format import attach_upstream_bn_buffers

__all__ = ["Registry", "ENCODERS", "DECODERS"]


class Registry:
    """A named collection of module builders.

    Args:
        kind: what the registry holds ("encoder", "decoder"); used in error messages.
        declares: attributes every built module must have.
    """

    def __init__(self, kind: str, declares: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.declares = declares
        self._builders: dict[str, Callable[..., nn.Module]] = {}

    def register(self, name: str, builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        """Add ``builder`` (a class or function taking keyword arguments) under ``name`` (lower
        case); a name can be registered only once."""
        key = name.lower()
        if key in self._builders:
            raise ValueError(f"{self.kind} {key!r} is already registered")
        self._builders[key] = builder
        return builder

    def build(self, name: str, **kwargs: Any) -> nn.Module:
        """Build the module registered under ``name`` (case-insensitive) with ``kwargs``.

        Raises:
            KeyError: ``name`` is unknown; the message lists the valid names.
            TypeError: the built module lacks one of the declared attributes.
        """
        key = str(name).lower()
        if key not in self._builders:
            raise KeyError(
                f"unknown {self.kind} {name!r}; valid names: {', '.join(self.names())}"
            )
        module = self._builders[key](**kwargs)
        missing = [attr for attr in self.declares if not hasattr(module, attr)]
        if missing:
            raise TypeError(
                f"{self.kind} {key!r} built a {type(module).__name__} without "
                f"{', '.join(missing)}; every {self.kind} must declare {', '.join(self.declares)}"
            )
        return attach_upstream_bn_buffers(module)

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._builders)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._builders


ENCODERS = Registry("encoder", declares=("out_channels", "strides"))
DECODERS = Registry("decoder", declares=("in_channels", "deep_sup", "output_index"))
