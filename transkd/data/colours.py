"""Label maps as pictures: colour masks in a dataset's palette, overlays and a colour legend (class
name → colour, so a mask can be read without the palette at hand). Plain image drawing, shared by
the engine's run pictures and by prediction."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Colour of ignored pixels (void) in masks.
VOID_COLOR = (0, 0, 0)


def colorize(label: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255) -> np.ndarray:
    """(H, W) class ids → (H, W, 3) uint8 RGB; ids outside the palette are drawn as void."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    table[ignore_index] = VOID_COLOR
    return table[np.asarray(label, dtype=np.uint8)]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a colour mask over an RGB image of the same size."""
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * mask.astype(np.float32)
    return mixed.clip(0, 255).astype(np.uint8)


def legend_entries(class_names: Sequence[str], palette: Sequence[Sequence[int]],
                   ignore: bool = True) -> list[tuple[str, tuple[int, int, int]]]:
    """(name, RGB) of every class, then ``ignored`` in the void colour."""
    entries = [(str(name), tuple(int(v) for v in colour)) for name, colour in zip(class_names, palette)]
    return entries + ([("ignored", VOID_COLOR)] if ignore else [])


def legend_image(class_names: Sequence[str], palette: Sequence[Sequence[int]], columns: int = 4,
                 ignore: bool = True) -> Image.Image:
    """A small picture of the colour legend: a swatch and the class name per entry."""
    entries = legend_entries(class_names, palette, ignore)
    font = ImageFont.load_default()
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = max(int(draw.textlength(name, font=font)) for name, _ in entries)
    swatch, pad = 14, 6
    cell = swatch + pad + text_width + 2 * pad
    columns = max(1, min(columns, len(entries)))
    rows = -(-len(entries) // columns)
    image = Image.new("RGB", (columns * cell + pad, rows * (swatch + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for index, (name, colour) in enumerate(entries):
        x = pad + (index % columns) * cell
        y = pad + (index // columns) * (swatch + pad)
        draw.rectangle((x, y, x + swatch, y + swatch), fill=colour, outline=(128, 128, 128))
        draw.text((x + swatch + pad, y + 1), name, fill=(0, 0, 0), font=font)
    return image
