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
from .protocols import ProtocolOptions, TransformedDataset, build_transform

__all__ = ["IGNORE_INDEX", "ProtocolOptions", "Sample", "SegmentationDataset", "TransformedDataset",
           "build_dataset", "build_transform", "dataset_class", "list_datasets", "register_dataset"]
