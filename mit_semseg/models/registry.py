"""Name -> builder registries for encoders and decoders.

Architecture names are data: each registry maps a name (the original's arch strings such as
``resnet50dilated`` or ``ppm_deepsup``, plus our additions) to a callable that builds the module.
Looking up an unknown name raises a ``KeyError`` that lists every valid name.
"""

from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

__all__ = ["Registry", "ENCODERS", "DECODERS"]


class Registry:
    """A named collection of module builders.

    Args:
        kind: what the registry holds ("encoder", "decoder"); used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., nn.Module]] = {}

    def register(self, name: str, builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        """Add ``builder`` under ``name`` (lower case); a name can be registered only once."""
        key = name.lower()
        if key in self._builders:
            raise ValueError(f"{self.kind} {key!r} is already registered")
        self._builders[key] = builder
        return builder

    def get(self, name: str) -> Callable[..., nn.Module]:
        """The builder registered under ``name`` (case-insensitive).

        Raises:
            KeyError: ``name`` is unknown; the message lists the valid names.
        """
        key = str(name).lower()
        if key not in self._builders:
            raise KeyError(
                f"unknown {self.kind} {name!r}; valid names: {', '.join(self.names())}"
            )
        return self._builders[key]

    def build(self, name: str, **kwargs: Any) -> nn.Module:
        """Build the module registered under ``name`` with keyword arguments ``kwargs``."""
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._builders)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._builders


ENCODERS = Registry("encoder")
DECODERS = Registry("decoder")
