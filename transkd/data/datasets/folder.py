"""A user's own data: a folder of images, a folder of masks and a small classes file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ...errors import ConfigError, DatasetError
from .base import IGNORE_INDEX, Color, FilePairDataset, as_root, voc_color_map
from .files import (
    FilePair,
    LabelMap,
    check_label_mode,
    index_by_stem,
    pair_by_key,
    read_color_label,
    read_label,
    read_list_file,
    require_dir,
)
from .registry import register_dataset

CLASSES_FILES = ("classes.yaml", "classes.yml", "classes.json")
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")
_CLASSES_KEYS = {"names", "colors", "ignore_index", "mask_format", "ignore_color"}


def _color(value: Any, where: str) -> Color:
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)):
        raise ConfigError(f"{where} must be an RGB triple of integers 0..255, got {value!r}")
    return (value[0], value[1], value[2])


def _parse_classes_file(path: Path) -> Any:
    """The file's YAML or JSON value; a syntax error is one sentence with its line and column
    (the parsers' own messages run over several lines and quote the file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"classes file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read classes file {path}: {exc.strerror or exc}") from None
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"classes file {path} is not valid JSON: {exc.msg.lower()} at line "
                              f"{exc.lineno}, column {exc.colno}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = " ".join(str(getattr(exc, "problem", None) or "syntax error").split())
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"classes file {path} is not valid YAML: {problem}{where}") from None


class ClassesSpec:
    """The parsed classes file: names, colours, the void value and the mask encoding."""

    def __init__(self, path: Path):
        data = _parse_classes_file(path)
        if not isinstance(data, dict):
            raise ConfigError(f"classes file {path} must hold a mapping with a 'names' list")
        unknown = sorted(set(data) - _CLASSES_KEYS)
        if unknown:
            raise ConfigError(f"classes file {path} has unknown key(s) {', '.join(unknown)}; "
                              f"known keys: {', '.join(sorted(_CLASSES_KEYS))}")
        names = data.get("names")
        if (not isinstance(names, list) or not names or len(names) > 255
                or not all(isinstance(n, str) and n for n in names)):
            raise ConfigError(f"'names' in {path} must be a list of 1..255 non-empty strings")
        if len(set(names)) != len(names):
            raise ConfigError(f"'names' in {path} lists a class twice")
        self.names = tuple(names)
        colors = data.get("colors")
        if colors is None:
            self.colors = voc_color_map(len(names))
        elif not isinstance(colors, list) or len(colors) != len(names):
            raise ConfigError(f"'colors' in {path} must list one RGB triple per class ({len(names)})")
        else:
            self.colors = tuple(_color(c, f"colour {i} in {path}") for i, c in enumerate(colors))
        self.ignore_value = data.get("ignore_index", IGNORE_INDEX)
        if (not isinstance(self.ignore_value, int) or isinstance(self.ignore_value, bool)
                or not len(names) <= self.ignore_value <= 255):
            raise ConfigError(f"'ignore_index' in {path} must be an integer in {len(names)}..255 "
                              f"(outside the class ids), got {self.ignore_value!r}")
        self.mask_format = data.get("mask_format", "index")
        if self.mask_format not in ("index", "color"):
            raise ConfigError(f"'mask_format' in {path} must be 'index' or 'color', "
                              f"got {self.mask_format!r}")
        ignore_color = data.get("ignore_color")
        self.ignore_color = (None if ignore_color is None
                             else _color(ignore_color, f"'ignore_color' in {path}"))
        if self.mask_format == "color":
            used = list(self.colors) + ([self.ignore_color] if self.ignore_color else [])
            if len(set(used)) != len(used):
                raise ConfigError(f"colour masks need distinct colours, but {path} repeats one "
                                  f"among 'colors'/'ignore_color'")


class ColorDecoder:
    """RGB mask → class ids through the palette (unknown colours are errors)."""

    def __init__(self, colors: tuple[Color, ...], ignore_color: Color | None):
        table = {self.pack(c): i for i, c in enumerate(colors)}
        if ignore_color is not None:
            table[self.pack(ignore_color)] = IGNORE_INDEX
        keys = sorted(table)
        self.keys = np.array(keys, dtype=np.int32)
        self.ids = np.array([table[k] for k in keys], dtype=np.uint8)

    @staticmethod
    def pack(color) -> int:
        return (int(color[0]) << 16) | (int(color[1]) << 8) | int(color[2])

    def __call__(self, rgb: np.ndarray, path: Path) -> np.ndarray:
        packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
        pos = np.minimum(np.searchsorted(self.keys, packed), len(self.keys) - 1)
        known = self.keys[pos] == packed
        if not known.all():
            r, g, b = (int(v) for v in rgb[~known][0])
            raise DatasetError(f"colour mask {path} holds colour ({r}, {g}, {b}), which is neither a "
                               f"class colour nor the ignore colour")
        return self.ids[pos]


@register_dataset
class FolderDataset(FilePairDataset):
    """Your own data. Layout under ``root``::

        classes.yaml             (or classes.yml / classes.json)
        images/{name}.jpg|png    (or images/{split}/...)
        masks/{name}.png         (or masks/{split}/...; same stem as the image)
        splits/{split}.txt       (optional: names of the split, one per line)

    A split is read from ``images/{split}/`` + ``masks/{split}/`` when those folders exist, else
    from the names in ``splits/{split}.txt`` (files directly in ``images/``/``masks/``), else
    ``split="all"`` takes every file directly in ``images/``. Folders are not searched
    recursively. The classes file::

        names: [background, road, car]          # class ids 0..K-1, in order
        colors: [[0, 0, 0], [128, 64, 128], [0, 0, 142]]   # optional RGB palette
        ignore_index: 255                       # optional: the mask value meaning "void" (>= K)
        mask_format: index                      # "index" (default) or "color"
        ignore_color: [255, 255, 255]           # optional, colour masks only

    ``index`` masks are 8-bit single-channel PNGs (palette PNGs count: their indices are read).
    ``color`` masks are RGB images mapped through ``colors``; any other colour is an error.
    Void always comes out as 255, whatever value the masks use.
    """

    name = "folder"

    def __init__(self, root: str | os.PathLike, split: str = "train",
                 classes_file: str | os.PathLike | None = None):
        root = as_root(root, self.name)
        spec = ClassesSpec(self._find_classes_file(root, classes_file))
        self.class_names, self.palette = spec.names, spec.colors
        self.mask_format = spec.mask_format
        self._decoder = ColorDecoder(spec.colors, spec.ignore_color) if spec.mask_format == "color" else None
        # Colour masks are decoded to ids with void already 255; index masks use the declared value.
        void = IGNORE_INDEX if self._decoder else spec.ignore_value
        label_map = LabelMap.identity(len(spec.names), void_values=(void,))
        image_root = require_dir(root / "images", "image folder")
        mask_root = require_dir(root / "masks", "mask folder")
        names = None
        if (image_root / split).is_dir():
            image_dir = image_root / split
            mask_dir = require_dir(mask_root / split, f"mask folder of split {split!r}")
        elif (root / "splits" / f"{split}.txt").is_file():
            image_dir, mask_dir = image_root, mask_root
            names = read_list_file(root / "splits" / f"{split}.txt")
        elif split == "all":
            image_dir, mask_dir = image_root, mask_root
        else:
            raise DatasetError(f"split {split!r} not found under {root}: expected {image_root / split}/ "
                               f"or {root / 'splits' / f'{split}.txt'} (or use split='all')")
        images = index_by_stem(image_dir)
        masks = {k: (p, label_map) for k, p in index_by_stem(mask_dir, MASK_SUFFIXES).items()}
        pairs = pair_by_key(images, masks, keys=names,
                            expected_label=lambda k: mask_dir / f"{k}.png",
                            expected_image=lambda k: image_dir / f"{k}.<png|jpg>")
        super().__init__(root, split, pairs)

    @staticmethod
    def _find_classes_file(root: Path, classes_file: str | os.PathLike | None) -> Path:
        if classes_file is not None:
            path = Path(classes_file).expanduser()
            path = path if path.is_absolute() else root / path
            if not path.is_file():
                raise DatasetError(f"classes file {path} does not exist")
            return path
        for name in CLASSES_FILES:
            if (root / name).is_file():
                return root / name
        raise DatasetError(f"folder dataset {root} has no classes file ({', '.join(CLASSES_FILES)})")

    def _read_raw_label(self, pair: FilePair) -> np.ndarray:
        if self._decoder is None:
            return read_label(pair.label)
        return self._decoder(read_color_label(pair.label), pair.label)

    def _check_label_header(self, mode: str, pair: FilePair) -> None:
        if self._decoder is None:
            check_label_mode(mode, pair.label)
        elif mode not in ("RGB", "RGBA", "P"):
            raise DatasetError(f"colour mask {pair.label} has image mode {mode!r}; expected an RGB image")
