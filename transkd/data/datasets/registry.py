"""Dataset names → classes, so configs and the CLI name datasets by a short string."""

from __future__ import annotations

import inspect
import os
from typing import Any

from ...errors import ConfigError
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
    params = inspect.signature(dataset_class(name).__init__).parameters
    return {k: p.default for k, p in params.items() if k not in ("self", "root", "split")}


def build_dataset(name: str, root: str | os.PathLike | None = None, split: str = "train",
                  **options: Any) -> SegmentationDataset:
    """Open split ``split`` of dataset ``name`` stored under ``root``.

    ``root=None`` is only valid for datasets that need no files (``synthetic``).
    Unknown options raise ConfigError naming them.
    """
    cls = dataset_class(name)
    known = dataset_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for dataset {name!r}; "
                          f"known options: {', '.join(known) or 'none'}")
    if not isinstance(split, str) or not split:
        raise ConfigError(f"split must be a non-empty string, got {split!r}")
    if cls.needs_root:
        root = as_root(root, name)
    elif root is not None:
        raise ConfigError(f"dataset {name!r} is generated on the fly and takes no root "
                          f"(got root={str(root)!r})")
    return cls(root, split=split, **options)
