"""Images without labels for distillation: folders of image files, or the training images whose
labels a run leaves out, and the seeded choice of which training labels a run keeps.

Distillation terms need only the images (the teacher supplies the targets), so a run can learn
from pictures nobody annotated. Files are found recursively, in sorted order, so the same folders
give the same list everywhere; a file whose header PIL cannot read is skipped and counted (as
``transkd predict`` does) rather than stopping the run, and a folder with no readable image at all
is an error naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import ConfigError, DatasetError
from .datasets.base import SegmentationDataset
from .datasets.files import _READ_ERRORS, IMAGE_SUFFIXES

#: File suffixes taken from an unlabelled folder: every common format PIL decodes.
UNLABELLED_SUFFIXES = tuple(sorted({*IMAGE_SUFFIXES, ".gif", ".pgm", ".ppm"}))
#: The word in ``data.unlabelled`` that stands for the training images whose labels are left out.
REST = "rest"


@dataclass
class ImageFiles:
    """Readable image files found under some folders, and the files skipped as unreadable."""

    paths: list[Path]
    names: list[str]
    sizes: list[tuple[int, int]]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> np.ndarray:
        return read_upright_rgb(self.paths[index])

    def size(self, index: int) -> tuple[int, int]:
        """(height, width) of image ``index`` as the header says (upright)."""
        return self.sizes[index]


def find_images(folders: Sequence[str | Path]) -> ImageFiles:
    """Every readable image file under ``folders`` (recursively, sorted per folder).

    A missing folder or one without any readable image raises a one-sentence ConfigError naming
    it; unreadable files are listed in ``skipped`` with PIL's reason."""
    found = ImageFiles([], [], [])
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            raise ConfigError(f"unlabelled image folder {root} does not exist" if not root.exists()
                              else f"unlabelled image folder {root} is a file, not a folder")
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
                       and p.suffix.lower() in UNLABELLED_SUFFIXES)
        readable = 0
        for path in files:
            try:
                size = upright_size(path)
            except _READ_ERRORS as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                found.skipped.append((path, f"not a readable image ({reason})"))
                continue
            found.paths.append(path)
            found.names.append(f"{root.name}/{path.relative_to(root).with_suffix('').as_posix()}")
            found.sizes.append(size)
            readable += 1
        if not readable:
            what = "no readable image file" if files else "no image file"
            raise ConfigError(f"unlabelled image folder {root} holds {what} "
                              f"({' '.join(UNLABELLED_SUFFIXES)}, searched recursively)")
    return found


def upright_size(path: Path) -> tuple[int, int]:
    """(height, width) from the header, sides swapped where EXIF rotates the picture."""
    with Image.open(path) as image:
        width, height = image.size
        if image.getexif().get(0x0112) in (5, 6, 7, 8):  # orientations that turn by 90 degrees
            width, height = height, width
    return height, width


def read_upright_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB, upright per EXIF; a file that fails to decode names itself."""
    try:
        with Image.open(path) as image:
            return np.array(ImageOps.exif_transpose(image).convert("RGB"))
    except _READ_ERRORS as exc:
        raise DatasetError(f"cannot read unlabelled image {path} (truncated or corrupt?): {exc}") from None


class DatasetImages:
    """The images of some samples of a labelled dataset, their labels left out (``rest``)."""

    def __init__(self, dataset: SegmentationDataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, index: int) -> np.ndarray:
        return self.dataset[self.indices[index]].image

    def size(self, index: int) -> tuple[int, int]:
        return tuple(self.image(index).shape[:2])


class ImageSources:
    """Several image sources read as one sequence (the ``rest`` and any folders, in order)."""

    def __init__(self, sources: Sequence[ImageFiles | DatasetImages]) -> None:
        self.sources = [s for s in sources if len(s)]
        self.offsets = np.cumsum([0, *(len(s) for s in self.sources)]).tolist()

    def __len__(self) -> int:
        return self.offsets[-1]

    def _locate(self, index: int) -> tuple[ImageFiles | DatasetImages, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} unlabelled images")
        source = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.sources[source], index - self.offsets[source]

    def image(self, index: int) -> np.ndarray:
        source, local = self._locate(index)
        return source.image(local)

    def size(self, index: int) -> tuple[int, int]:
        source, local = self._locate(index)
        return source.size(local)

    @property
    def skipped(self) -> list[tuple[Path, str]]:
        return [item for s in self.sources if isinstance(s, ImageFiles) for item in s.skipped]


def labelled_choice(length: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Which samples of a split keep their label: ``round(fraction × length)`` of them (at least one
    when ``fraction`` > 0), a pure function of ``seed``; returns (kept, rest), each sorted."""
    if fraction >= 1:
        return list(range(length)), []
    count = 0 if fraction <= 0 else min(length, max(1, round(fraction * length)))
    order = np.random.default_rng([seed, length]).permutation(length)
    return sorted(order[:count].tolist()), sorted(order[count:].tolist())


def seeded_pick(length: int, count: int, seed: int) -> list[int]:
    """``count`` of ``length`` indices (all of them if fewer), a pure function of ``seed``, sorted."""
    if count >= length:
        return list(range(length))
    return sorted(np.random.default_rng([seed, length, count]).permutation(length)[:count].tolist())
