"""NYU Depth v2 indoor scenes with the 40-class labels of Gupta et al. (2013)."""

from __future__ import annotations

import os
from pathlib import Path

from .base import FilePairDataset, as_root, check_split, voc_color_map
from .files import LabelMap, index_by_stem, pair_by_key, read_list_file, require_dir
from .registry import register_dataset

NYUV2_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor mat", "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
)
# VOC colour map shifted by one, so no class is drawn black (black reads as void).
NYUV2_PALETTE = voc_color_map(len(NYUV2_CLASSES) + 1)[1:]
# Stored 0 = void, 1..40 = classes; 255 is accepted as void too.
NYUV2_LABEL_MAP = LabelMap.from_table({0: 255, 255: 255, **{k + 1: k for k in range(len(NYUV2_CLASSES))}})
_SPLIT_FILES = {"train": "train", "test": "test", "val": "test"}


@register_dataset
class NYUv2(FilePairDataset):
    """NYUv2, 40 classes, void = 255 (train 795 / test 654 images).

    Layout under ``root``::

        images/{name}.png | .jpg        RGB frames (640x480)
        labels40/{name}.png             8-bit, 0 = void, 1..40 = the 40 classes
        splits/train.txt, splits/test.txt   one name per line (extension optional)

    Labels are shifted to train ids 0..39 with void → 255. ``val`` is an alias of ``test``
    (NYUv2 has no separate validation split).
    """

    name = "nyuv2"
    splits = ("train", "val", "test")
    class_names = NYUV2_CLASSES
    palette = NYUV2_PALETTE

    def __init__(self, root: str | os.PathLike, split: str = "train"):
        root = as_root(root, self.name)
        check_split(split, self.splits, self.name)
        names = read_list_file(root / "splits" / f"{_SPLIT_FILES[split]}.txt")
        image_dir = require_dir(root / "images", "NYUv2 image folder")
        label_dir = require_dir(root / "labels40", "NYUv2 label folder")
        images = index_by_stem(image_dir)
        labels: dict[str, tuple[Path, LabelMap]] = {
            k: (p, NYUV2_LABEL_MAP) for k, p in index_by_stem(label_dir, (".png",)).items()}
        pairs = pair_by_key(images, labels, keys=names,
                            expected_label=lambda k: label_dir / f"{k}.png",
                            expected_image=lambda k: image_dir / f"{k}.png")
        super().__init__(root, split, pairs)
