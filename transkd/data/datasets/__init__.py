"""Dataset loaders: raw images and train-id labels, paired by file name, with clear errors.

Importing this package registers every dataset with ``build_dataset``.
"""

from . import acdc, ade20k, camvid, cityscapes, coco_stuff, folder, nyuv2, synthetic, voc  # noqa: F401  (registers)
from .base import IGNORE_INDEX, FilePairDataset, Sample, SegmentationDataset, voc_color_map
from .files import LabelMap
from .registry import (
    build_dataset,
    check_dataset_options,
    dataset_class,
    dataset_options,
    dataset_schema,
    list_datasets,
    register_dataset,
)

__all__ = ["IGNORE_INDEX", "FilePairDataset", "LabelMap", "Sample", "SegmentationDataset",
           "build_dataset", "check_dataset_options", "dataset_class", "dataset_options", "dataset_schema",
           "list_datasets", "register_dataset",
           "voc_color_map"]
