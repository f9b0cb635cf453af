"""COCO-Stuff-164k: the COCO 2017 images with 171 thing and stuff classes (Caesar et al., 2018)."""

from __future__ import annotations

import os
from pathlib import Path

from ...errors import ConfigError, DatasetError
from .base import FilePairDataset, as_root, check_split, voc_color_map
from .files import LabelMap, index_by_stem, pair_by_key, require_dir
from .registry import register_dataset

# COCO ids 1..91 are things, 92..182 stuff; these 11 thing ids were never annotated.
_UNUSED_IDS = frozenset({12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91})
_THINGS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)
_STUFF = (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds",
    "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other",
    "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing",
    "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf",
    "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)
COCO_STUFF_CLASSES = _THINGS + _STUFF
#: The COCO category id of each class, in class order.
COCO_STUFF_IDS = tuple(i for i in range(1, 183) if i not in _UNUSED_IDS)
COCO_STUFF_PALETTE = voc_color_map(len(COCO_STUFF_CLASSES) + 1)[1:]
# stuffthingmaps store COCO id - 1 (0..181) and 255 = unlabelled; an unused id is void too.
RAW_LABEL_MAP = LabelMap.from_table({255: 255, **{cid - 1: 255 for cid in _UNUSED_IDS},
                                     **{cid - 1: k for k, cid in enumerate(COCO_STUFF_IDS)}})
TRAIN_ID_LABEL_MAP = LabelMap.identity(len(COCO_STUFF_CLASSES))
TRAIN_ID_SUFFIX = "_labelTrainIds"
LABEL_SOURCES = ("auto", "stuffthingmaps", "trainids")
_SPLIT_FOLDERS = {"train": "train2017", "train2017": "train2017", "val": "val2017", "val2017": "val2017"}


@register_dataset
class COCOStuff(FilePairDataset):
    """COCO-Stuff-164k, 171 classes (80 things, 91 stuff), unlabelled = 255 (train 118k / val 5k).

    Layout under ``root``::

        images/{train2017,val2017}/{name}.jpg
        annotations/{train2017,val2017}/{name}.png                 stuffthingmaps: COCO id - 1
        annotations/{train2017,val2017}/{name}_labelTrainIds.png   (optional) train ids 0..170

    ``label_source``: ``stuffthingmaps`` maps the released maps (COCO id − 1, 255 unlabelled)
    to train ids 0..170 in COCO id order; ``trainids`` reads mmsegmentation's converted
    ``*_labelTrainIds.png``; ``auto`` takes converted files where present.
    """

    name = "coco_stuff"
    splits = tuple(_SPLIT_FOLDERS)
    class_names = COCO_STUFF_CLASSES
    palette = COCO_STUFF_PALETTE

    def __init__(self, root: str | os.PathLike, split: str = "train", label_source: str = "auto"):
        root = as_root(root, self.name)
        check_split(split, self.splits, self.name)
        if label_source not in LABEL_SOURCES:
            raise ConfigError(f"label_source must be one of {', '.join(LABEL_SOURCES)}, "
                              f"got {label_source!r}")
        folder = _SPLIT_FOLDERS[split]
        image_dir, label_dir = root / "images" / folder, root / "annotations" / folder
        if not image_dir.is_dir():
            raise DatasetError(f"COCO-Stuff split {split!r} not found: {image_dir} is missing")
        require_dir(label_dir, f"COCO-Stuff annotation folder of split {split!r}")
        found = index_by_stem(label_dir, (".png",))
        raw = {k: (p, RAW_LABEL_MAP) for k, p in found.items() if not k.endswith(TRAIN_ID_SUFFIX)}
        converted = {k.removesuffix(TRAIN_ID_SUFFIX): (p, TRAIN_ID_LABEL_MAP)
                     for k, p in found.items() if k.endswith(TRAIN_ID_SUFFIX)}
        labels: dict[str, tuple[Path, LabelMap]] = {
            "stuffthingmaps": raw, "trainids": converted, "auto": {**raw, **converted}}[label_source]
        suffix = TRAIN_ID_SUFFIX if label_source == "trainids" else ""
        pairs = pair_by_key(index_by_stem(image_dir, (".jpg", ".jpeg", ".png")), labels,
                            expected_label=lambda k: label_dir / f"{k}{suffix}.png",
                            expected_image=lambda k: image_dir / f"{k}.jpg")
        super().__init__(root, split, pairs)
