"""Model names → builders, so configs and the CLI refer to networks by a short name.

Besides the registered names, two prefixes reach other libraries' networks:
``hf:<folder or hub id>`` (a transformers segmentation model, see ``hf.py``) and
``timm:<name>`` (a timm backbone with a transkd head, see ``timm_backbone.py``).
"""

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
    #: False when the weights carry their class count (an hf: model): num_classes may be omitted.
    needs_num_classes: bool = True


def _build_hf(source: str):
    def build(num_classes: int | None = None, **options):
        from .hf import build_hf  # deferred: transformers is optional and slow to import
        return build_hf(source, num_classes, **options)
    return build


def _build_timm(name: str):
    def build(num_classes: int, **options):
        from .timm_backbone import build_timm  # deferred: timm is optional and imports torchvision
        return build_timm(name, num_classes, **options)
    return build


PREFIXES = {"hf": (_build_hf, "Hugging Face transformers segmentation model", False),
            "timm": (_build_timm, "timm backbone with a transkd decode head", True)}


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
    prefix, _, rest = name.partition(":")
    if rest and prefix in PREFIXES:
        builder, description, needs_classes = PREFIXES[prefix]
        return ModelEntry(name, builder(rest), prefix, "segmentor", f"{description}: {rest}",
                          needs_classes)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def create_model(name: str, num_classes: int | None = None, **kwargs) -> nn.Module:
    """Build a registered model with fresh (random) weights, or an ``hf:``/``timm:`` network.

    Segmentors need ``num_classes`` (an ``hf:`` model takes its own unless given one, which
    re-heads it); encoders take none.
    """
    entry = get_entry(name)
    if entry.kind == "encoder":
        if num_classes is not None:
            raise ConfigError(f"{name!r} is an encoder and takes no num_classes")
        return entry.builder(**kwargs)
    if num_classes is None:
        if not entry.needs_num_classes:
            return entry.builder(**kwargs)
        raise ConfigError(f"{name!r} is a segmentation model: pass num_classes")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    return entry.builder(num_classes=num_classes, **kwargs)
