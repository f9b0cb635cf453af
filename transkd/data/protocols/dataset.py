"""A dataset with a protocol's pipeline applied, with augmentation fixed by (seed, epoch, index);
unlabelled images through the same pipeline, from their own random stream."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ...errors import ConfigError, DatasetError
from ..transforms import resize_image


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _EpochSeeded(Dataset):
    """A dataset whose per-sample random draws depend on (seed, epoch, index) only."""

    def __init__(self, seed: int) -> None:
        if not _is_int(seed) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        if not _is_int(epoch) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = epoch


class TransformedDataset(_EpochSeeded):
    """A dataset with a pipeline applied; sample ``i`` in epoch ``e`` uses rng [seed, e, i].

    The generator depends on nothing else, so augmentation is identical whatever the number of
    workers or the resume point. Call :meth:`set_epoch` before creating each epoch's iterator
    (with ``persistent_workers`` the workers keep the epoch they were started with).
    """

    def __init__(self, dataset: Dataset, transform, seed: int = 0, skip_bad: bool = False) -> None:
        super().__init__(seed)
        self.dataset = dataset
        self.transform = transform
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.dataset)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        wanted, skipped = index, []
        while True:
            try:
                sample = self.dataset[index]
                break
            except DatasetError as exc:
                if not self.skip_bad:
                    raise
                # data.skip_bad_samples: the next readable sample takes its place (the same one
                # every time, so a resumed run reads what the uninterrupted one read).
                skipped.append(str(exc))
                if len(skipped) == len(self):
                    raise DatasetError(f"every sample is unreadable, the first: {skipped[0]}") from None
                index = (index + 1) % len(self)
        image, label = self.transform(sample.image, sample.label, self.rng(wanted))
        return {"image": image, "label": label, "name": sample.name, "index": wanted,
                "skipped": "\n".join(skipped)}

    def describe(self, index: int) -> str:
        describe = getattr(self.dataset, "describe", None)
        return describe(index) if describe is not None else f"sample {index}"


class UnlabelledTransformedDataset(_EpochSeeded):
    """Unlabelled images through a training pipeline: the same photometric and geometric steps
    as labelled samples, drawn from their own stream ``[seed, epoch, index, 1]``.

    The pipeline is joint, so a stand-in label (all ``ignore_index``) goes through it beside the
    image and gives the label's shape; the returned label is all ``ignore_index`` (whatever the
    pipeline turned void into), so nothing downstream can mistake it for supervision. ``frame``
    (height, width): resize every image to it first, for protocols whose training input size
    depends on the image's size, so that images of any size batch with the labelled ones.
    """

    def __init__(self, images, transform, seed: int = 0, ignore_index: int = 255,
                 frame: tuple[int, int] | None = None) -> None:
        super().__init__(seed)
        self.images = images
        self.transform = transform
        self.ignore_index = ignore_index
        self.frame = tuple(frame) if frame is not None else None

    def __len__(self) -> int:
        return len(self.images)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index, 1])

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} unlabelled images")
        image = self.images.image(index)
        if self.frame is not None and image.shape[:2] != self.frame:
            image = resize_image(image, self.frame)
        stand_in = np.full(image.shape[:2], self.ignore_index, dtype=np.uint8)
        image, label = self.transform(image, stand_in, self.rng(index))
        return {"image": image, "label": torch.full_like(label, self.ignore_index), "index": index}
