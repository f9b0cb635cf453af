"""ACDC (adverse conditions: fog, night, rain, snow) with the 19 Cityscapes classes."""

from __future__ import annotations

import os
from collections.abc import Iterable

from ...errors import ConfigError, DatasetError
from .base import FilePairDataset, as_root
from .cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, pair_cityscapes_style
from .files import available_subdirs, require_dir
from .registry import register_dataset

ACDC_CONDITIONS = ("fog", "night", "rain", "snow")


def parse_conditions(conditions: str | Iterable[str] | None) -> tuple[str, ...]:
    if conditions is None:
        return ACDC_CONDITIONS
    chosen = (conditions,) if isinstance(conditions, str) else tuple(conditions)
    unknown = [c for c in chosen if c not in ACDC_CONDITIONS]
    if unknown or not chosen:
        raise ConfigError(f"conditions must be a non-empty subset of {', '.join(ACDC_CONDITIONS)}, "
                          f"got {list(chosen)!r}")
    return tuple(dict.fromkeys(chosen))


@register_dataset
class ACDC(FilePairDataset):
    """ACDC semantic segmentation, 19 Cityscapes classes, void = 255.

    Layout under ``root``::

        rgb_anon/{condition}/{split}/{sequence}/{sequence}_frame_{n}_rgb_anon.png
        gt/{condition}/{split}/{sequence}/{sequence}_frame_{n}_gt_labelTrainIds.png
            (or *_gt_labelIds.png, converted with the Cityscapes table)

    ``condition`` is fog, night, rain or snow; splits are train (1600) and val (406). All
    conditions are pooled by default; ``conditions=("fog",)`` opens one for per-condition
    evaluation. ``sample_conditions[i]`` tells the condition of example ``i``. The
    ``{split}_ref`` reference-image folders are not used.
    """

    name = "acdc"
    class_names = CITYSCAPES_CLASSES
    palette = CITYSCAPES_PALETTE

    def __init__(self, root: str | os.PathLike, split: str = "train",
                 conditions: str | Iterable[str] | None = None, label_source: str = "auto"):
        root = as_root(root, self.name)
        self.conditions = parse_conditions(conditions)
        image_root = require_dir(root / "rgb_anon", "ACDC image folder")
        label_root = require_dir(root / "gt", "ACDC label folder")
        pairs, sample_conditions = [], []
        for condition in self.conditions:
            image_dir = require_dir(image_root / condition, f"ACDC condition folder {condition!r}")
            if not (image_dir / split).is_dir():
                raise DatasetError(f"ACDC split {split!r} not found: {image_dir / split} is missing "
                                   f"(available: {available_subdirs(image_dir)})")
            label_dir = require_dir(label_root / condition / split,
                                    f"ACDC label folder of {condition}/{split}")
            found = pair_cityscapes_style(image_dir / split, label_dir, "_rgb_anon.png", "_gt",
                                          label_source)
            pairs += found
            sample_conditions += [condition] * len(found)
        self.sample_conditions = tuple(sample_conditions)
        super().__init__(root, split, pairs)
