"""Token grids: the (rows, columns) a sequence of patch tokens came from, when a network does not say.

Wrappers of foreign networks (transformers, timm) need it to report their patch embeddings with a
grid, and distillation to resample one token grid to another.
"""

from __future__ import annotations

import math


def grid_of(count: int, height: int, width: int) -> tuple[int, int] | None:
    """The token grid of ``count`` tokens cut from an image of ``height``×``width`` pixels by a
    patch stride (powers of two and the ViT strides 14/16/28), or None if none fits."""
    for stride in (1, 2, 4, 8, 14, 16, 28, 32, 64):
        for rounding in (math.ceil, math.floor):
            grid = (int(rounding(height / stride)), int(rounding(width / stride)))
            if grid[0] * grid[1] == count:
                return grid
    return None
