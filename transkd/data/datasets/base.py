"""The dataset interface every loader implements: raw RGB images and train-id label maps.

Datasets return data as stored (no resizing, no augmentation); the protocol's transforms do the
rest. Labels are already mapped to train ids ``0..K-1`` with void as ``ignore_index`` (255).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from torch.utils.data import Dataset

from ...errors import DatasetError
from .files import FilePair, check_label_mode, check_same_size, header, read_image, read_label

IGNORE_INDEX = 255

Color = tuple[int, int, int]


@dataclass
class Sample:
    """One raw example: ``image`` (H, W, 3) uint8 RGB, ``label`` (H, W) uint8 train ids."""

    image: np.ndarray
    label: np.ndarray
    name: str


class SegmentationDataset(Dataset, ABC):
    """A split of a semantic-segmentation dataset, indexable and sized.

    Subclasses set ``name``, ``class_names`` and ``palette`` (class attributes when fixed,
    instance attributes when read from disk) and implement ``__len__``/``__getitem__``.
    """

    name: ClassVar[str] = ""
    #: Whether ``build_dataset`` must be given a root folder.
    needs_root: ClassVar[bool] = True
    #: Split names a user may ask for; None when the split folders on disk decide.
    splits: ClassVar[tuple[str, ...] | None] = None
    class_names: tuple[str, ...] = ()
    palette: tuple[Color, ...] = ()
    ignore_index: int = IGNORE_INDEX

    def __init__(self, split: str):
        self.split = split

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, index: int) -> Sample: ...

    def describe(self, index: int) -> str:
        """Sample ``index`` named for a message, without reading it (its files where it has them)."""
        return f"sample {index} of split {self.split!r} of {self.name}"

    def validate(self, strict: bool = False) -> int:
        """Check every example and return how many there are; raise DatasetError on the first bad one.

        ``strict=False`` reads only file headers (readable, label mode, sizes); ``strict=True``
        decodes everything and checks label values too.
        """
        for i in range(len(self)):
            self.check_sample(self[i])
        return len(self)

    def check_sample(self, sample: Sample) -> None:
        """Raise DatasetError naming the sample unless it follows the ``Sample`` contract."""
        image, label = sample.image, sample.label
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise DatasetError(f"sample {sample.name!r} of {self.name}: image must be (H, W, 3) uint8, "
                               f"got {image.shape} {image.dtype}")
        if label.dtype != np.uint8 or label.shape != image.shape[:2]:
            raise DatasetError(f"sample {sample.name!r} of {self.name}: label must be {image.shape[:2]} "
                               f"uint8, got {label.shape} {label.dtype}")
        bad = (label >= self.num_classes) & (label != self.ignore_index)
        if bad.any():
            raise DatasetError(f"sample {sample.name!r} of {self.name}: label value "
                               f"{int(label[bad][0])} is neither a class id nor {self.ignore_index}")

    def labels(self) -> Iterator[np.ndarray]:
        """Every label map in order; file datasets skip decoding the images."""
        for i in range(len(self)):
            yield self[i].label

    def class_pixel_counts(self) -> np.ndarray:
        """Pixels per class over the split (int64, length K) — for frequencies and class weights."""
        counts = np.zeros(self.num_classes, dtype=np.int64)
        for label in self.labels():
            counts += np.bincount(label.ravel(), minlength=256)[: self.num_classes]
        return counts

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, "
                f"samples={len(self)}, classes={self.num_classes})")


def voc_color_map(n: int) -> tuple[Color, ...]:
    """The Pascal VOC colour map (bit-interleaved index → RGB): distinct, reproducible colours."""
    colors = []
    for index in range(n):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colors.append((r, g, b))
    return tuple(colors)


def as_root(root: str | os.PathLike | None, dataset: str) -> Path:
    """The dataset root as a Path; a missing folder raises naming it."""
    if root is None:
        raise DatasetError(f"dataset {dataset!r} needs a root folder (root=...)")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(f"dataset {dataset!r}: root folder {path} does not exist or is not a folder")
    return path


def check_split(split: str, known: Sequence[str], dataset: str) -> None:
    if split not in known:
        raise DatasetError(f"unknown split {split!r} for {dataset}; known splits: {', '.join(known)}")


class FilePairDataset(SegmentationDataset):
    """A dataset of (image file, label file) pairs matched by name beforehand."""

    def __init__(self, root: Path, split: str, pairs: list[FilePair]):
        super().__init__(split)
        if not pairs:
            raise DatasetError(f"split {split!r} of {self.name} under {root} holds no images")
        self.root = root
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def describe(self, index: int) -> str:
        pair = self.pairs[index]
        return f"{pair.image} (label {pair.label})"

    def __getitem__(self, index: int) -> Sample:
        pair = self.pairs[index]
        image = read_image(pair.image)
        return Sample(image, self._read_label(pair, image.shape), pair.name)

    def _read_raw_label(self, pair: FilePair) -> np.ndarray:
        return read_label(pair.label)

    def _read_label(self, pair: FilePair, image_shape: tuple[int, ...] | None) -> np.ndarray:
        raw = self._read_raw_label(pair)
        if image_shape is not None and raw.shape[:2] != image_shape[:2]:
            check_same_size((image_shape[1], image_shape[0]), (raw.shape[1], raw.shape[0]), pair)
        return pair.label_map.apply(raw, pair.label)

    def _check_label_header(self, mode: str, pair: FilePair) -> None:
        check_label_mode(mode, pair.label)

    def validate(self, strict: bool = False) -> int:
        for index, pair in enumerate(self.pairs):
            if strict:
                self[index]
                continue
            _, image_size = header(pair.image, "image")
            label_mode, label_size = header(pair.label, "label")
            self._check_label_header(label_mode, pair)
            check_same_size(image_size, label_size, pair)
        return len(self.pairs)

    def labels(self) -> Iterator[np.ndarray]:
        for pair in self.pairs:
            yield self._read_label(pair, None)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.pairs]
