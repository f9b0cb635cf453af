"""CamVid driving scenes in the 11-class SegNet split."""

from __future__ import annotations

import os
from pathlib import Path

from ...errors import DatasetError
from .base import FilePairDataset, as_root, check_split
from .files import LabelMap, index_by_stem, pair_by_key, require_dir
from .registry import register_dataset

CAMVID_CLASSES = (
    "sky", "building", "pole", "road", "sidewalk", "tree", "sign symbol", "fence", "car",
    "pedestrian", "bicyclist",
)
# Colours of the SegNet tutorial's CamVid visualisation.
CAMVID_PALETTE = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)
# 11 = unlabelled; 255 is accepted as void too.
CAMVID_LABEL_MAP = LabelMap.identity(len(CAMVID_CLASSES), void_values=(11, 255))


@register_dataset
class CamVid(FilePairDataset):
    """CamVid, 11 classes, void (stored as 11) = 255 (train 367 / val 101 / test 233, 480x360).

    Layout under ``root`` (the SegNet tutorial's ``CamVid/`` folder)::

        {train,val,test}/{name}.png          RGB frames
        {train,val,test}annot/{name}.png     8-bit class ids 0..10, 11 = unlabelled

    An annotation has the same file name as its image.
    """

    name = "camvid"
    splits = ("train", "val", "test")
    class_names = CAMVID_CLASSES
    palette = CAMVID_PALETTE

    def __init__(self, root: str | os.PathLike, split: str = "train"):
        root = as_root(root, self.name)
        check_split(split, self.splits, self.name)
        image_dir, label_dir = root / split, root / f"{split}annot"
        if not image_dir.is_dir():
            raise DatasetError(f"CamVid split {split!r} not found: {image_dir} is missing")
        require_dir(label_dir, f"CamVid annotation folder of split {split!r}")
        images = index_by_stem(image_dir)
        labels: dict[str, tuple[Path, LabelMap]] = {
            k: (p, CAMVID_LABEL_MAP) for k, p in index_by_stem(label_dir, (".png",)).items()}
        pairs = pair_by_key(images, labels,
                            expected_label=lambda k: label_dir / f"{k}.png",
                            expected_image=lambda k: image_dir / f"{k}.png")
        super().__init__(root, split, pairs)
