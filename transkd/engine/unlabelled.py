"""The unlabelled side of a run: which training labels it keeps, which images it reads without
labels, how they are transformed, and, without any labelled dataset, the classes (from the
teacher) and the images that measure the student's agreement with the teacher.

Everything here reads inputs and raises one-sentence errors; nothing writes files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..config import NO_DATASET, Config
from ..data.datasets import SegmentationDataset, voc_color_map
from ..data.protocols import UnlabelledTransformedDataset, build_transform
from ..data.selection import SubsetSplit
from ..data.unlabelled import (
    REST,
    DatasetImages,
    ImageSources,
    find_images,
    labelled_choice,
    seeded_pick,
)
from ..weights.io import class_names_of, model_file, read_metadata


@dataclass
class UnlabelledData:
    """The unlabelled images of a run and how they came about (for the log)."""

    images: ImageSources
    #: Training samples whose label the run keeps, of how many in the split (None: no dataset).
    labelled_kept: int | None = None
    labelled_total: int | None = None
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def describe(self) -> str:
        """One line: what the run trains on, every number named."""
        parts = []
        if self.labelled_total is not None:
            parts.append(f"{self.labelled_kept} labelled training images (of {self.labelled_total} "
                         "in the split)")
        else:
            parts.append("no labelled training images")
        parts.append(f"{len(self.images)} unlabelled images")
        if self.skipped:
            parts.append(f"{len(self.skipped)} unreadable file(s) skipped, e.g. {self.skipped[0][0]}")
        return "data: " + ", ".join(parts)


def labelled_seed(config: Config) -> int:
    data = config.data
    return data.labelled_seed if data.labelled_seed is not None else config.train.seed


def split_labels(config: Config, train: SegmentationDataset | None
                 ) -> tuple[SegmentationDataset | None, UnlabelledData | None]:
    """The labelled training set a run uses (all of ``train``, a seeded subset, or none) and its
    unlabelled images (``data.unlabelled``: folders and/or ``rest``), or None without any."""
    data = config.data
    entries = data.unlabelled_entries
    if train is None:  # data.name none: folders only
        if not entries:
            return None, None
        files = find_images(entries)
        return None, UnlabelledData(ImageSources([files]), skipped=files.skipped)
    kept, rest = labelled_choice(len(train), data.labelled_fraction, labelled_seed(config))
    labelled = train if len(kept) == len(train) else (SubsetSplit(train, kept, train.split) if kept else None)
    if not entries:
        return labelled, None
    folders = [e for e in entries if e != REST]
    files = find_images(folders) if folders else None
    sources = ([DatasetImages(train, rest)] if REST in entries else []) + ([files] if files else [])
    return labelled, UnlabelledData(ImageSources(sources), len(kept), len(train),
                                    files.skipped if files else [])


def training_frame(config: Config, labelled: SegmentationDataset | None,
                   images: ImageSources) -> tuple[int, int] | None:
    """The size unlabelled images are resized to before the training pipeline: None when the
    protocol fixes the training size, else the size of the first labelled training image (the
    first unlabelled one without labels), so that every image batches with the others."""
    if config.protocol.protocol().fixed_train_size() is not None:
        return None
    if labelled is not None:
        return tuple(labelled[0].image.shape[:2])
    return images.size(0)


def transformed_unlabelled(config: Config, images: ImageSources, num_classes: int,
                           frame: tuple[int, int] | None, train: bool = True,
                           normalize_on_device: bool = False) -> UnlabelledTransformedDataset:
    """Unlabelled images through the protocol's training (or evaluation) pipeline;
    ``normalize_on_device``: images stay uint8 for the trainer to normalise."""
    transform = build_transform(config.protocol, train=train, num_classes=num_classes,
                                normalize_on_device=normalize_on_device)
    return UnlabelledTransformedDataset(images, transform, config.train.seed,
                                        config.protocol.ignore_index, frame)


def agreement_images(config: Config, images: ImageSources) -> _Picked:
    """The seeded choice of ``data.agreement_images`` unlabelled images that measure agreement."""
    return _Picked(images, seeded_pick(len(images), config.data.agreement_images, config.train.seed))


class _Picked:
    """Some images of an :class:`ImageSources`, in order."""

    def __init__(self, images: ImageSources, indices: list[int]) -> None:
        self.parent = images
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, index: int):
        return self.parent.image(self.indices[index])

    def size(self, index: int) -> tuple[int, int]:
        return self.parent.size(self.indices[index])

    @property
    def skipped(self) -> list[tuple[Path, str]]:
        return []


def teacher_classes(config: Config, teacher: nn.Module) -> dict[str, Any]:
    """Class names and palette of a run without a labelled dataset: the teacher file's metadata
    (``class_<i>`` and generated colours where it has none)."""
    meta: dict[str, Any] = {}
    if config.teacher.weights is not None:
        meta = read_metadata(model_file(config.teacher.weights)) or {}
    names = class_names_of(meta, int(teacher.num_classes))
    palette = meta.get("palette")
    valid = (isinstance(palette, list) and len(palette) >= len(names)
             and all(isinstance(c, list) and len(c) == 3 for c in palette))
    colours = tuple(tuple(int(v) for v in c) for c in palette[:len(names)]) if valid \
        else voc_color_map(len(names))
    return {"name": NO_DATASET, "class_names": tuple(names), "palette": colours}
