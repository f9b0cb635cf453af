"""Reading image/label files and pairing them by name, with one-sentence errors naming the file.

Pairing is by a key derived from each file name (never by sorted position), so a missing or extra
file is reported instead of silently shifting every later pair.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ...errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# PIL raises these for unreadable, truncated or absurdly large files.
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, UnidentifiedImageError,
                Image.DecompressionBombError)
_LABEL_MODES = ("L", "P")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


@dataclass(frozen=True)
class LabelMap:
    """Raw label value → train id (``ignore`` for void), plus which raw values are legal.

    A 256-entry lookup table keeps the mapping one vectorised gather per label map.
    """

    lut: np.ndarray    # uint8[256]
    valid: np.ndarray  # bool[256]

    @classmethod
    def from_table(cls, table: Mapping[int, int]) -> LabelMap:
        lut = np.full(256, 255, dtype=np.uint8)
        valid = np.zeros(256, dtype=bool)
        for raw, train_id in table.items():
            lut[raw] = train_id
            valid[raw] = True
        return cls(lut, valid)

    @classmethod
    def identity(cls, num_classes: int, void_values: Iterable[int] = (255,),
                 ignore_index: int = 255) -> LabelMap:
        """Values ``0..num_classes-1`` are kept; each of ``void_values`` becomes ``ignore_index``."""
        table = {k: k for k in range(num_classes)}
        table.update({v: ignore_index for v in void_values})
        return cls.from_table(table)

    def describe_valid(self) -> str:
        """The legal raw values as compact ranges, e.g. ``0..10, 255``."""
        values = np.flatnonzero(self.valid).tolist()
        parts: list[str] = []
        start = prev = values[0] if values else None
        for v in values[1:] + [None]:
            if v is not None and v == prev + 1:
                prev = v
                continue
            parts.append(str(start) if start == prev else f"{start}..{prev}")
            start = prev = v
        return ", ".join(parts)

    def apply(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Map raw values to train ids; raise naming ``path`` if any value is illegal."""
        # np.take: several times faster than fancy indexing with a uint8 index array.
        if not np.take(self.valid, raw).all():
            bad = np.unique(raw[~np.take(self.valid, raw)])
            shown = ", ".join(str(v) for v in bad[:8]) + (", ..." if bad.size > 8 else "")
            raise DatasetError(f"label {path} holds value(s) {shown} outside the legal values "
                               f"{self.describe_valid()}")
        return np.take(self.lut, raw)


@dataclass(frozen=True)
class FilePair:
    """One image and its label file; ``name`` is the image file stem used for outputs."""

    image: Path
    label: Path
    name: str
    label_map: LabelMap


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{what} {path} does not exist or is not a folder")
    return path


def available_subdirs(path: Path) -> str:
    """Sub-folder names of ``path`` for error messages ("none" if there are none)."""
    names = sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []
    return ", ".join(names) if names else "none"


def _open(path: Path, what: str) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise DatasetError(f"{what} {path} does not exist") from None
    except _READ_ERRORS as exc:
        raise DatasetError(f"cannot read {what} {path}: {exc}") from None


def _decode(img: Image.Image, path: Path, what: str, rgb: bool) -> np.ndarray:
    try:
        with img:
            img.load()
            if rgb and img.mode != "RGB":
                img = img.convert("RGB")
            # np.array (not asarray): a writable array, at the cost of one memcpy.
            return np.array(img)
    except _READ_ERRORS as exc:
        raise DatasetError(f"cannot read {what} {path} (truncated or corrupt?): {exc}") from None


def read_image(path: Path) -> np.ndarray:
    """An RGB image as ``(H, W, 3) uint8``; unreadable/truncated files raise DatasetError."""
    return _decode(_open(path, "image"), path, "image", rgb=True)


def check_label_mode(mode: str, path: Path) -> None:
    """Labels are 8-bit single-channel index maps ("L", or "P" whose indices are the labels)."""
    if mode in _LABEL_MODES:
        return
    if mode in _SIXTEEN_BIT_MODES:
        raise DatasetError(f"label {path} is a 16-bit/32-bit image (mode {mode!r}); class ids must "
                           f"be stored as an 8-bit single-channel PNG")
    if mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        raise DatasetError(f"label {path} is a colour image (mode {mode!r}); expected a "
                           f"single-channel index map (mode 'L' or palette 'P')")
    raise DatasetError(f"label {path} has image mode {mode!r}; expected a single-channel 8-bit "
                       f"index map (mode 'L' or palette 'P')")


def read_label(path: Path) -> np.ndarray:
    """A raw label index map ``(H, W) uint8`` (palette PNGs give their indices, not colours)."""
    img = _open(path, "label")
    check_label_mode(img.mode, path)
    return _decode(img, path, "label", rgb=False)


def read_color_label(path: Path) -> np.ndarray:
    """A colour-coded label as ``(H, W, 3) uint8`` RGB."""
    img = _open(path, "label")
    if img.mode in _SIXTEEN_BIT_MODES:
        check_label_mode(img.mode, path)
    return _decode(img, path, "label", rgb=True)


def header(path: Path, what: str) -> tuple[str, tuple[int, int]]:
    """(mode, (width, height)) from the file header only — cheap, used by ``validate()``."""
    with _open(path, what) as img:
        return img.mode, img.size


def check_same_size(image_size: tuple[int, int], label_size: tuple[int, int], pair: FilePair) -> None:
    """Sizes are (width, height)."""
    if image_size != label_size:
        raise DatasetError(f"label {pair.label} is {label_size[0]}x{label_size[1]} but its image "
                           f"{pair.image} is {image_size[0]}x{image_size[1]} (width x height)")


def index_by_suffix(folder: Path, suffix: str, pattern: str = "*") -> dict[str, Path]:
    """Files under ``folder`` matching ``pattern + suffix``, keyed by relative path minus suffix.

    The relative parent folder is part of the key, so ``a/x`` and ``b/x`` never pair across
    folders.
    """
    found: dict[str, Path] = {}
    for path in folder.glob(pattern + suffix):
        if path.is_file():
            rel = path.relative_to(folder).as_posix()
            found[rel[: -len(suffix)]] = path
    return found


def index_by_stem(folder: Path, suffixes: Iterable[str] = IMAGE_SUFFIXES) -> dict[str, Path]:
    """Files directly in ``folder`` with one of ``suffixes`` (any case), keyed by stem.

    Two files with the same stem (``x.png`` and ``x.jpg``) are ambiguous and raise.
    """
    allowed = {s.lower() for s in suffixes}
    found: dict[str, Path] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            path = Path(entry.path)
            if entry.is_file() and path.suffix.lower() in allowed and not entry.name.startswith("."):
                if path.stem in found:
                    raise DatasetError(f"two files share the name {path.stem!r} in {folder}: "
                                       f"{found[path.stem].name} and {path.name}")
                found[path.stem] = path
    return found


def pair_by_key(images: Mapping[str, Path], labels: Mapping[str, tuple[Path, LabelMap]], *,
                expected_label: Callable[[str], Path], expected_image: Callable[[str], Path],
                keys: Iterable[str] | None = None) -> list[FilePair]:
    """Pair files that share a key; any image without label (or the reverse) raises.

    ``keys`` restricts pairing to a list (split files); then both files must exist for every
    listed key, and files outside the list are ignored.
    """
    if keys is None:
        wanted = sorted(set(images) | set(labels))
    else:
        wanted = list(dict.fromkeys(keys))
    no_label = [k for k in wanted if k in images and k not in labels]
    no_image = [k for k in wanted if k not in images]
    if no_label:
        more = f" ({len(no_label) - 1} more images lack labels)" if len(no_label) > 1 else ""
        raise DatasetError(f"image {images[no_label[0]]} has no label (expected "
                           f"{expected_label(no_label[0])}){more}")
    if no_image:
        key = no_image[0]
        more = f" ({len(no_image) - 1} more are missing)" if len(no_image) > 1 else ""
        what = f"label {labels[key][0]}" if key in labels else f"listed name {key!r}"
        raise DatasetError(f"{what} has no image (expected {expected_image(key)}){more}")
    return [FilePair(images[k], labels[k][0], images[k].stem, labels[k][1]) for k in wanted]


def read_list_file(path: Path) -> list[str]:
    """Names from a split list: one per line; first token; folders and extension dropped.

    Accepts both ``2007_000032`` and ``/JPEGImages/2007_000032.jpg /SegmentationClassAug/...``.
    """
    if not path.is_file():
        raise DatasetError(f"split list {path} does not exist")
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        token = line.strip().split()[0] if line.strip() else ""
        if token and not token.startswith("#"):
            base = token.replace("\\", "/").rsplit("/", 1)[-1]
            stem, dot, ext = base.rpartition(".")
            names.append(stem if dot and f".{ext.lower()}" in IMAGE_SUFFIXES else base)
    return names
