"""Per-class weights of the cross-entropy: ERFNet's fixed Cityscapes weights or median frequency."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch.utils.data import Dataset

from ...errors import ConfigError
from .options import ProtocolOptions

#: ERFNet's fixed Cityscapes class weights (trainId order), used by the paper on Cityscapes and ACDC.
ERFNET_CITYSCAPES_WEIGHTS = (
    2.5959737, 6.741505, 3.5353868, 9.866315, 9.690922, 9.369371, 10.289124, 9.953209, 4.3098087,
    9.490392, 7.674411, 9.396925, 10.347794, 6.3928986, 10.226673, 10.241072, 10.28059, 10.396977,
    10.05567,
)
ERFNET_DATASETS = ("cityscapes", "acdc")


def class_weights(dataset_name: str, num_classes: int, opts: ProtocolOptions,
                  dataset: Dataset | None = None) -> torch.Tensor | None:
    """Per-class CE weights (float32), or None for unweighted CE.

    With ``void_as_extra_class`` the tensor has ``num_classes + 1`` entries, the last (void) 0.
    "median_freq" needs ``dataset`` (anything whose items have a ``label`` array).
    """
    mode = opts.resolved_class_weights(dataset_name, num_classes)
    if mode == "erfnet":
        if dataset_name not in ERFNET_DATASETS or num_classes != len(ERFNET_CITYSCAPES_WEIGHTS):
            raise ConfigError(f"protocol option 'class_weights' = 'erfnet' holds only for the 19 "
                              f"Cityscapes classes (cityscapes, acdc), not {dataset_name!r} with "
                              f"{num_classes} classes")
        weights = torch.tensor(ERFNET_CITYSCAPES_WEIGHTS, dtype=torch.float32)
    elif mode == "median_freq":
        if dataset is None:
            raise ConfigError("protocol option 'class_weights' = 'median_freq' needs the training dataset")
        weights = median_frequency_weights((s.label for s in _samples(dataset)), num_classes,
                                           opts.ignore_index)
    elif opts.void_as_extra_class:
        weights = torch.ones(num_classes, dtype=torch.float32)
    else:
        return None
    if opts.void_as_extra_class:
        weights = torch.cat([weights, torch.zeros(1)])
    return weights


def _samples(dataset: Dataset) -> Iterable:
    return (dataset[i] for i in range(len(dataset)))


def median_frequency_weights(labels: Iterable[np.ndarray], num_classes: int,
                             ignore_index: int = 255) -> torch.Tensor:
    """Median-frequency balancing (Eigen & Fergus): weight_c = median(freq) / freq_c.

    freq_c = pixels of class c / labelled pixels of the images that contain c. Classes that never
    occur get weight 1 (they contribute no loss either way).
    """
    class_pixels = np.zeros(num_classes, dtype=np.int64)
    image_pixels = np.zeros(num_classes, dtype=np.int64)
    for label in labels:
        counts = np.bincount(np.asarray(label).ravel(), minlength=256)
        counts[ignore_index] = 0
        if counts[num_classes:].any():
            bad = int(np.flatnonzero(counts[num_classes:])[0]) + num_classes
            raise ConfigError(f"label value {bad} is outside the {num_classes} classes and is not "
                              f"ignore_index {ignore_index}")
        present = counts[:num_classes] > 0
        class_pixels += counts[:num_classes]
        image_pixels[present] += counts.sum()
    seen = class_pixels > 0
    weights = np.ones(num_classes, dtype=np.float64)
    if seen.any():
        freq = class_pixels[seen] / image_pixels[seen]
        weights[seen] = np.median(freq) / freq
    return torch.tensor(weights, dtype=torch.float32)
