"""A dataset with a protocol's pipeline applied, with augmentation fixed by (seed, epoch, index)."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from ...errors import ConfigError, DatasetError


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class TransformedDataset(Dataset):
    """A dataset with a pipeline applied; sample ``i`` in epoch ``e`` uses rng [seed, e, i].

    The generator depends on nothing else, so augmentation is identical whatever the number of
    workers or the resume point. Call :meth:`set_epoch` before creating each epoch's iterator
    (with ``persistent_workers`` the workers keep the epoch they were started with).
    """

    def __init__(self, dataset: Dataset, transform, seed: int = 0, skip_bad: bool = False) -> None:
        if not _is_int(seed) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.skip_bad = skip_bad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        if not _is_int(epoch) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = epoch

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
