"""ADE20K scene parsing (SceneParsing150, the ADEChallengeData2016 release): 150 classes."""

from __future__ import annotations

import os
from pathlib import Path

from ...errors import DatasetError
from .base import FilePairDataset, as_root, check_split, voc_color_map
from .files import LabelMap, index_by_stem, pair_by_key, require_dir
from .registry import register_dataset

# The 150 classes of the benchmark in class-id order (first name of each objectInfo150 entry).
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing",
    "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)
# VOC colour map shifted by one, so no class is drawn black (black reads as void).
ADE20K_PALETTE = voc_color_map(len(ADE20K_CLASSES) + 1)[1:]
# Stored 0 = "other" (not evaluated) → ignore; stored k = class k - 1 (mmsegmentation's
# reduce_zero_label). 255 is accepted as void too.
ADE20K_LABEL_MAP = LabelMap.from_table({0: 255, 255: 255,
                                        **{k + 1: k for k in range(len(ADE20K_CLASSES))}})
_SPLIT_FOLDERS = {"train": "training", "training": "training", "val": "validation",
                  "validation": "validation"}


@register_dataset
class ADE20K(FilePairDataset):
    """ADE20K, 150 classes, stored 0 ("other") = 255 (train 20210 / val 2000 images).

    Layout under ``root`` (the ``ADEChallengeData2016`` folder)::

        images/{training,validation}/{name}.jpg
        annotations/{training,validation}/{name}.png   8-bit, 0 = other, 1..150 = the classes

    Labels are shifted to train ids 0..149 with 0 → 255 (ignored), as every published
    ADE20K number counts them. ``train``/``val`` name the ``training``/``validation`` folders.
    """

    name = "ade20k"
    splits = ("train", "val", "training", "validation")
    class_names = ADE20K_CLASSES
    palette = ADE20K_PALETTE

    def __init__(self, root: str | os.PathLike, split: str = "train"):
        root = as_root(root, self.name)
        check_split(split, self.splits, self.name)
        folder = _SPLIT_FOLDERS[split]
        image_dir, label_dir = root / "images" / folder, root / "annotations" / folder
        if not image_dir.is_dir():
            raise DatasetError(f"ADE20K split {split!r} not found: {image_dir} is missing "
                               "(root must be the ADEChallengeData2016 folder)")
        require_dir(label_dir, f"ADE20K annotation folder of split {split!r}")
        images = index_by_stem(image_dir, (".jpg", ".jpeg", ".png"))
        labels: dict[str, tuple[Path, LabelMap]] = {
            k: (p, ADE20K_LABEL_MAP) for k, p in index_by_stem(label_dir, (".png",)).items()}
        pairs = pair_by_key(images, labels,
                            expected_label=lambda k: label_dir / f"{k}.png",
                            expected_image=lambda k: image_dir / f"{k}.jpg")
        super().__init__(root, split, pairs)
