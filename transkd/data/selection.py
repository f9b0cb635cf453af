"""Which images choose the checkpoint that is reported, kept apart from the images it is reported on.

``data.selection`` takes three forms:

- ``val``: the best checkpoint on the validation split, which is also the reported split; the
  number is optimistic (chosen and reported on the same images). Runs written before this option
  existed behaved this way, so it stays the default reading of an older config.
- ``train_holdout:F`` or ``train_holdout:F:SEED``: a fraction ``F`` (0 < F < 1) of the training
  split, drawn with a seeded permutation (``SEED``, default 0, independent of ``train.seed`` so every
  run of a seed sweep trains on the same images), is removed from training and chooses the
  checkpoint; the reported split is evaluated once, at the end.
- ``last`` (or ``none``): no selection; the last checkpoint is reported, evaluated once at the end.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .datasets.base import Sample, SegmentationDataset

VAL, HOLDOUT, LAST = "val", "train_holdout", "last"


@dataclass(frozen=True)
class Selection:
    """A parsed ``data.selection``."""

    mode: str  # VAL, HOLDOUT or LAST
    fraction: float = 0.0
    seed: int = 0

    @property
    def on_reported_split(self) -> bool:
        return self.mode == VAL

    def label(self, val_split: str = "val", images: int | None = None) -> str:
        """Words for tables: ``best on train_holdout 10% (37 images)``, ``last epoch``."""
        if self.mode == LAST:
            return "last checkpoint (no selection)"
        if self.mode == VAL:
            return f"best on {val_split} (the reported split: optimistic)"
        count = f", {images} images" if images is not None else ""
        seed = f", seed {self.seed}" if self.seed else ""
        return f"best on train_holdout {100 * self.fraction:g}%{count}{seed}"


def parse_selection(text: str, key: str = "data.selection") -> Selection:
    """``"train_holdout:0.1"`` → ``Selection("train_holdout", 0.1, 0)``; one sentence if malformed."""
    parts = str(text).strip().split(":")
    if parts[0] in (VAL, LAST, "none") and len(parts) == 1:
        return Selection(LAST if parts[0] == "none" else parts[0])
    if parts[0] == HOLDOUT and len(parts) in (2, 3):
        try:
            fraction = float(parts[1])
            seed = int(parts[2]) if len(parts) == 3 else 0
        except ValueError:
            fraction, seed = -1.0, 0
        if 0 < fraction < 1 and seed >= 0:
            return Selection(HOLDOUT, fraction, seed)
    raise ConfigError(f"config key {key!r} must be 'val', 'last', 'none' or 'train_holdout:F[:SEED]' "
                      f"with 0 < F < 1 (e.g. train_holdout:0.1), got {text!r}")


def holdout_indices(length: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, held-out indices), disjoint and sorted; at least one of each."""
    held = min(length - 1, max(1, round(length * fraction)))
    if length < 2:
        raise ConfigError(f"data.selection holds out part of the training split, which has only "
                          f"{length} image(s)")
    order = np.random.default_rng([seed, length]).permutation(length)
    return np.sort(order[held:]), np.sort(order[:held])


class SubsetSplit(SegmentationDataset):
    """Some images of a split, in the given order, with the split's classes and palette (the
    training images a held-out selection slice leaves, or the labels ``data.labelled_fraction``
    keeps)."""

    def __init__(self, base: SegmentationDataset, indices: Sequence[int], split: str) -> None:
        super().__init__(split)
        self.base = base
        self.indices = [int(i) for i in indices]
        self.name = base.name
        self.class_names = tuple(base.class_names)
        self.palette = tuple(base.palette)
        self.ignore_index = base.ignore_index

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Sample:
        return self.base[self.indices[index]]

    def describe(self, index: int) -> str:
        return self.base.describe(self.indices[index])

    def validate(self, strict: bool = False) -> int:
        self.base.validate(strict)
        return len(self)

    def labels(self) -> Iterator[np.ndarray]:
        for index in self.indices:
            yield self.base[index].label


def split_for_selection(train: SegmentationDataset, selection: Selection
                        ) -> tuple[SegmentationDataset, SegmentationDataset | None]:
    """(what trains, what selects): the held-out images leave the training split."""
    if selection.mode != HOLDOUT:
        return train, None
    kept, held = holdout_indices(len(train), selection.fraction, selection.seed)
    return (SubsetSplit(train, kept, train.split),
            SubsetSplit(train, held, f"{train.split} holdout"))
