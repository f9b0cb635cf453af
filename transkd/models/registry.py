"""Model names → builders, so configs and the CLI refer to networks by a short name."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError


class UnknownModelError(ConfigError):
    """Raised for a model name that is not registered; the message lists the known names."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    family: str
    kind: str  # "segmentor" or "encoder"
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, builder: Callable[..., nn.Module], *, family: str, kind: str,
                   description: str = "") -> None:
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = ModelEntry(name, builder, family, kind, description)


def list_models(pattern: str = "*", kind: str | None = None) -> list[str]:
    """Registered model names matching a shell pattern, optionally of one kind."""
    return sorted(n for n, e in _REGISTRY.items()
                  if fnmatch.fnmatch(n, pattern) and (kind is None or e.kind == kind))


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def create_model(name: str, num_classes: int | None = None, **kwargs) -> nn.Module:
    """Build a registered model with fresh (random) weights.

    Segmentors need ``num_classes``; encoders take none.
    """
    entry = get_entry(name)
    if entry.kind == "encoder":
        if num_classes is not None:
            raise ConfigError(f"{name!r} is an encoder and takes no num_classes")
        return entry.builder(**kwargs)
    if num_classes is None:
        raise ConfigError(f"{name!r} is a segmentation model: pass num_classes")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    return entry.builder(num_classes=num_classes, **kwargs)
