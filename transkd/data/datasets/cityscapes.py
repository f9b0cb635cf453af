"""Cityscapes (19 evaluation classes) and the official label-id → train-id table."""

from __future__ import annotations

import os
from pathlib import Path

from ...errors import ConfigError, DatasetError
from .base import Color, FilePairDataset, as_root
from .files import FilePair, LabelMap, available_subdirs, index_by_suffix, pair_by_key, require_dir
from .registry import register_dataset

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)
CITYSCAPES_PALETTE: tuple[Color, ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)

# (name, id, trainId) as in cityscapesScripts/helpers/labels.py; trainId 255 or -1 = ignored.
CITYSCAPES_LABELS: tuple[tuple[str, int, int], ...] = (
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255),
    ("out of roi", 3, 255), ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255),
    ("road", 7, 0), ("sidewalk", 8, 1), ("parking", 9, 255), ("rail track", 10, 255),
    ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4), ("guard rail", 14, 255),
    ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8), ("terrain", 22, 9),
    ("sky", 23, 10), ("person", 24, 11), ("rider", 25, 12), ("car", 26, 13), ("truck", 27, 14),
    ("bus", 28, 15), ("caravan", 29, 255), ("trailer", 30, 255), ("train", 31, 16),
    ("motorcycle", 32, 17), ("bicycle", 33, 18), ("license plate", -1, -1),
)


def label_id_table() -> dict[int, int]:
    """Raw ``*_labelIds.png`` value → train id. Id -1 (license plate) is 255 once stored as uint8."""
    return {label_id & 0xFF: (train_id if 0 <= train_id < 255 else 255)
            for _, label_id, train_id in CITYSCAPES_LABELS}


TRAIN_ID_MAP = LabelMap.identity(len(CITYSCAPES_CLASSES))
LABEL_ID_MAP = LabelMap.from_table(label_id_table())
LABEL_SOURCES = ("auto", "trainids", "labelids")


def pair_cityscapes_style(image_dir: Path, label_dir: Path, image_suffix: str, label_prefix: str,
                          label_source: str) -> list[FilePair]:
    """Pair ``{seq}/{stem}{image_suffix}`` with ``{seq}/{stem}{label_prefix}_label(Train)Ids.png``.

    ``label_source``: "trainids" reads ``*_labelTrainIds.png``, "labelids" converts
    ``*_labelIds.png`` with the official table, "auto" prefers the former file when both exist.
    """
    if label_source not in LABEL_SOURCES:
        raise ConfigError(f"label_source must be one of {', '.join(LABEL_SOURCES)}, got {label_source!r}")
    train_suffix, id_suffix = f"{label_prefix}_labelTrainIds.png", f"{label_prefix}_labelIds.png"
    images = index_by_suffix(image_dir, image_suffix, "*/*")
    labels: dict[str, tuple[Path, LabelMap]] = {}
    if label_source in ("auto", "labelids"):
        labels.update((k, (p, LABEL_ID_MAP)) for k, p in index_by_suffix(label_dir, id_suffix, "*/*").items())
    if label_source in ("auto", "trainids"):
        labels.update((k, (p, TRAIN_ID_MAP))
                      for k, p in index_by_suffix(label_dir, train_suffix, "*/*").items())
    wanted_suffix = id_suffix if label_source == "labelids" else train_suffix
    return pair_by_key(images, labels,
                       expected_label=lambda k: label_dir / f"{k}{wanted_suffix}",
                       expected_image=lambda k: image_dir / f"{k}{image_suffix}")


@register_dataset
class Cityscapes(FilePairDataset):
    """Cityscapes fine annotations, 19 classes, void = 255.

    Layout under ``root``::

        leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
        gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelTrainIds.png   (preferred)
        gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png        (converted on the fly)

    Splits are the folders under ``leftImg8bit`` (train 2975, val 500). With only
    ``*_labelIds.png`` present, ids are mapped to train ids with the official table, so running
    cityscapesScripts' ``createTrainIdLabelImgs`` first is optional.
    """

    name = "cityscapes"
    class_names = CITYSCAPES_CLASSES
    palette = CITYSCAPES_PALETTE

    def __init__(self, root: str | os.PathLike, split: str = "train", label_source: str = "auto"):
        root = as_root(root, self.name)
        image_dir = require_dir(root / "leftImg8bit", "Cityscapes image folder")
        if not (image_dir / split).is_dir():
            raise DatasetError(f"Cityscapes split {split!r} not found: {image_dir / split} is missing "
                               f"(available: {available_subdirs(image_dir)})")
        label_dir = require_dir(root / "gtFine" / split, f"Cityscapes label folder of split {split!r}")
        pairs = pair_cityscapes_style(image_dir / split, label_dir, "_leftImg8bit.png", "_gtFine",
                                      label_source)
        super().__init__(root, split, pairs)
