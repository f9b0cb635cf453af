"""Using a trained student: segment images (``predict``), export it (``export``), time it (``bench``).

A deployable student is one ``.safetensors`` file (``student.safetensors`` of a distillation run,
``model.safetensors`` of a network trained alone): weights plus metadata. Everything here reads
that file alone, through :func:`transkd.weights.load_model`. Required keys (written by
:func:`transkd.weights.io.save_model`): ``architecture``, ``num_classes``, ``mean``, ``std``.
Optional keys the trainer adds and this package uses when present:

- ``dataset`` (str), ``class_names`` (list of str), ``palette`` (list of [r, g, b]);
- ``void_as_extra_class`` (bool): the last output is the paper's void class and is never predicted;
- ``resize``: how inputs were resized for evaluation — ``{"short_side": 512}``,
  ``{"size": [H, W]}``, ``{"scale": [long, short]}`` (keep-ratio bound) or null (original size);
- ``inference_options``: ``{"mode": "whole" | "slide", "crop": [H, W], "stride": [H, W]}``.

Missing names become ``class_<i>`` and a missing palette a generated one, so any saved student works.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..inference import is_size
from ..models.segmentor import normalisation_of
from ..weights.io import class_names_of, load_model, model_file, read_metadata


@dataclass
class Student:
    """A rebuilt student and what its file says about classes, colours and input handling."""

    model: nn.Module
    path: Path
    metadata: dict[str, Any]
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    palette_generated: bool

    @property
    def name(self) -> str:
        return str(getattr(self.model, "model_name", type(self.model).__name__))

    @property
    def num_classes(self) -> int:
        """Classes a prediction can take (outputs beyond them, e.g. void, are ignored)."""
        return len(self.class_names)

    @property
    def mean(self) -> tuple[float, ...]:
        """Input normalisation in [0, 1] units (ImageNet when the file predates the key, as
        :func:`transkd.weights.io.model_metadata` assumes)."""
        return normalisation_of(self.model)[0]

    @property
    def std(self) -> tuple[float, ...]:
        return normalisation_of(self.model)[1]

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", last: bool = False) -> Student:
        """The student saved at ``path`` (file or run folder, see :func:`~transkd.weights.load_model`),
        in eval mode on ``device``, with its classes and colours."""
        path = model_file(path, last)
        model = load_model(path, map_location=device).eval()
        metadata = read_metadata(path) or {}
        names = class_names_of(metadata, int(model.num_classes))
        palette, generated = palette_of(metadata, len(names))
        return cls(model, path, metadata, names, palette, generated)

    def describe(self) -> str:
        """``segformer_b0, 19 classes (cityscapes), from runs/x/best/student.safetensors``."""
        dataset = self.metadata.get("dataset")
        where = f" ({dataset})" if dataset else ""
        return f"{self.name}, {self.num_classes} classes{where}, from {self.path}"


def palette_of(metadata: dict[str, Any], num_classes: int) -> tuple[tuple[tuple[int, int, int], ...], bool]:
    """(palette, generated?): the saved RGB colours if there is a valid one per class, else generated."""
    saved = metadata.get("palette")
    if isinstance(saved, list) and len(saved) >= num_classes and all(_is_rgb(c) for c in saved):
        return tuple(tuple(int(v) for v in c) for c in saved[:num_classes]), False
    return generated_palette(num_classes), True


def _is_rgb(colour: Any) -> bool:
    return (isinstance(colour, (list, tuple)) and len(colour) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in colour))


def generated_palette(count: int) -> tuple[tuple[int, int, int], ...]:
    """Distinct colours by the PASCAL VOC bit-interleaving rule, skipping its black entry 0
    (black stays free for "no prediction" in overlays and viewers)."""
    colours = []
    for index in range(1, count + 1):
        r = g = b = 0
        value = index
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
            if not value:
                break
        colours.append((r, g, b))
    return tuple(colours)


def parse_size(values: Sequence[int] | None, option: str) -> tuple[int, int] | None:
    """A (height, width) option as a tuple of positive ints, or a one-sentence error naming it."""
    if values is None:
        return None
    size = tuple(values)
    if not is_size(size):
        raise ConfigError(f"{option} must be two positive integers (height width), got "
                          f"{' '.join(map(str, size))}")
    return size


__all__ = ["Student", "generated_palette", "palette_of", "parse_size"]
