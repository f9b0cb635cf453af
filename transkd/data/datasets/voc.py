"""Pascal VOC 2012 segmentation (20 objects + background), with the SBD-augmented train set."""

from __future__ import annotations

import os
from pathlib import Path

from ...errors import DatasetError
from .base import FilePairDataset, as_root, check_split, voc_color_map
from .files import LabelMap, index_by_stem, pair_by_key, read_list_file, require_dir
from .registry import register_dataset

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
VOC_PALETTE = voc_color_map(len(VOC_CLASSES))
VOC_LABEL_MAP = LabelMap.identity(len(VOC_CLASSES))
_AUG_LISTS = ("trainaug.txt", "train_aug.txt")


@register_dataset
class PascalVOC(FilePairDataset):
    """Pascal VOC 2012, 21 classes, object boundaries (255) ignored.

    Layout under ``root`` (the ``VOCdevkit/VOC2012`` folder)::

        JPEGImages/{name}.jpg
        SegmentationClass/{name}.png         palette PNGs: the palette index is the class id
        ImageSets/Segmentation/{train,val,trainval}.txt
        SegmentationClassAug/{name}.png      (trainaug only) SBD + VOC labels, 8-bit class ids
        ImageSets/Segmentation/trainaug.txt  (or train_aug.txt) the 10582 names

    ``trainaug`` is the usual augmented set: the SBD annotations of Hariharan et al. converted
    to PNG (``SegmentationClassAug``) plus the VOC train labels, minus the VOC val images. List
    lines may be bare names or ``/JPEGImages/x.jpg /SegmentationClassAug/x.png`` pairs.
    """

    name = "voc"
    splits = ("train", "val", "trainval", "trainaug")
    class_names = VOC_CLASSES
    palette = VOC_PALETTE

    def __init__(self, root: str | os.PathLike, split: str = "train"):
        root = as_root(root, self.name)
        split = "trainaug" if split == "train_aug" else split
        check_split(split, self.splits, self.name)
        list_dir = root / "ImageSets" / "Segmentation"
        if split == "trainaug":
            found = [list_dir / n for n in _AUG_LISTS if (list_dir / n).is_file()]
            if not found:
                raise DatasetError(f"VOC split 'trainaug' needs {list_dir / _AUG_LISTS[0]} "
                                   f"(or {_AUG_LISTS[1]}), which is missing")
            list_file, label_dir = found[0], root / "SegmentationClassAug"
        else:
            list_file, label_dir = list_dir / f"{split}.txt", root / "SegmentationClass"
        names = read_list_file(list_file)
        image_dir = require_dir(root / "JPEGImages", "VOC image folder")
        require_dir(label_dir, "VOC label folder")
        images = index_by_stem(image_dir, (".jpg", ".jpeg"))
        labels: dict[str, tuple[Path, LabelMap]] = {
            k: (p, VOC_LABEL_MAP) for k, p in index_by_stem(label_dir, (".png",)).items()}
        pairs = pair_by_key(images, labels, keys=names,
                            expected_label=lambda k: label_dir / f"{k}.png",
                            expected_image=lambda k: image_dir / f"{k}.jpg")
        super().__init__(root, split, pairs)
