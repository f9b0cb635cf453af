"""Synthetic street scenes rendered on the fly: the built-in dataset that needs no download."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ...errors import ConfigError
from .base import Color, Sample, SegmentationDataset, check_split
from .cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from .registry import register_dataset
from .street_scene import STREET_CLASSES, StreetRenderer

# Each split draws from its own random stream, so train and val never share a scene.
SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}
DEFAULT_LENGTHS = {"train": 1000, "val": 200, "test": 200}
STREET_PALETTE: tuple[Color, ...] = tuple(
    CITYSCAPES_PALETTE[CITYSCAPES_CLASSES.index(name)] for name in STREET_CLASSES)


def _size(size: int | Sequence[int]) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if (len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
            or not all(32 <= v <= 4096 for v in pair)):
        raise ConfigError(f"size must be (height, width) with integers in 32..4096, got {size!r}")
    return pair[0], pair[1]


@register_dataset
class SyntheticStreets(SegmentationDataset):
    """Procedural street scenes, 10 classes (road, sidewalk, building, fence, pole, traffic sign,
    vegetation, sky, person, car), void = 255 (the ego vehicle's bonnet in some images).

    No files: example ``i`` of a split is rendered from ``np.random.default_rng([seed, split, i])``,
    so it is identical on every call, in every worker and on every machine with the same numpy.
    ``size`` is (height, width), default 128x256; ``length`` defaults to 1000 (train) or 200
    (val, test). Colours follow the Cityscapes palette of the same classes.
    """

    name = "synthetic"
    needs_root = False
    splits = tuple(SPLIT_STREAMS)
    class_names = STREET_CLASSES
    palette = STREET_PALETTE

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train",
                 length: int | None = None, size: int | Sequence[int] = (128, 256), seed: int = 0):
        if root is not None:
            raise ConfigError(f"dataset 'synthetic' is generated on the fly and takes no root (got {root!r})")
        check_split(split, self.splits, self.name)
        super().__init__(split)
        self.length = DEFAULT_LENGTHS[split] if length is None else length
        if not isinstance(self.length, int) or isinstance(self.length, bool) or self.length < 1:
            raise ConfigError(f"length must be a positive integer, got {length!r}")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        self.size = _size(size)
        self.seed = seed
        self._renderer = StreetRenderer(*self.size)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} synthetic samples")
        rng = np.random.default_rng([self.seed, SPLIT_STREAMS[self.split], index])
        image, label = self._renderer.render(rng)
        return Sample(image, label, f"synthetic_{self.split}_{index:06d}")

    def validate(self, strict: bool = False) -> int:
        """Rendered data has no files to check; ``strict`` renders every sample and checks it."""
        return super().validate() if strict else self.length
