"""Data: datasets (raw images + train-id labels) and the protocols' joint transforms."""

from .datasets import (
    IGNORE_INDEX,
    Sample,
    SegmentationDataset,
    build_dataset,
    dataset_class,
    list_datasets,
    register_dataset,
)

__all__ = ["IGNORE_INDEX", "Sample", "SegmentationDataset", "build_dataset", "dataset_class",
           "list_datasets", "register_dataset"]
