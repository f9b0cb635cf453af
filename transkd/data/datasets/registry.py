"""Dataset names → classes, so configs and the CLI name datasets by a short string."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import typing
from collections.abc import Mapping
from typing import Any

from ...errors import ConfigError
from ...options import Keys, convert
from .base import SegmentationDataset, as_root

_DATASETS: dict[str, type[SegmentationDataset]] = {}


def register_dataset(cls: type[SegmentationDataset]) -> type[SegmentationDataset]:
    """Class decorator: make a dataset available by its ``name``."""
    if not cls.name or cls.name in _DATASETS:
        raise ValueError(f"dataset name {cls.name!r} is empty or registered twice")
    _DATASETS[cls.name] = cls
    return cls


def list_datasets() -> list[str]:
    return sorted(_DATASETS)


def dataset_class(name: str) -> type[SegmentationDataset]:
    """The class of a registered dataset (its fixed ``class_names``/``palette`` need no data)."""
    try:
        return _DATASETS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: "
                          f"{', '.join(list_datasets())}") from None


def dataset_options(name: str) -> dict[str, Any]:
    """Options ``build_dataset`` accepts for ``name`` (besides root and split), with defaults."""
    return {f.name: f.default for f in dataclasses.fields(dataset_schema(name))}


def dataset_schema(name: str) -> type:
    """The options of dataset ``name`` as a dataclass, read from its constructor's typed keywords
    (besides root and split), so a dataset declares each option once, in its signature."""
    return _options_of(dataset_class(name))


@functools.cache
def _options_of(cls: type[SegmentationDataset]) -> type:
    hints = typing.get_type_hints(cls.__init__)
    fields = [(p.name, hints.get(p.name, Any), dataclasses.field(default=p.default))
              for p in inspect.signature(cls.__init__).parameters.values()
              if p.name not in ("self", "root", "split")]
    return dataclasses.make_dataclass(f"{cls.__name__}Options", fields)


def check_dataset_options(name: str, options: Mapping[str, Any], keys: Keys | None = None) -> None:
    """Names and types of the options of dataset ``name``; ranges are the dataset's to check."""
    keys = keys or Keys(noun="option", owner=f" for dataset {name!r}")
    convert(dataset_schema(name), options, keys)


def build_dataset(name: str, root: str | os.PathLike | None = None, split: str = "train",
                  **options: Any) -> SegmentationDataset:
    """Open split ``split`` of dataset ``name`` stored under ``root``.

    ``root=None`` is only valid for datasets that need no files (``synthetic``).
    Unknown or mistyped options raise ConfigError naming them.
    """
    cls = dataset_class(name)
    check_dataset_options(name, options)
    if not isinstance(split, str) or not split:
        raise ConfigError(f"split must be a non-empty string, got {split!r}")
    if cls.needs_root:
        root = as_root(root, name)
    elif root is not None:
        raise ConfigError(f"dataset {name!r} is generated on the fly and takes no root "
                          f"(got root={str(root)!r})")
    return cls(root, split=split, **options)
