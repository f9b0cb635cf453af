"""Pairing a teacher's stages with a student's by stride, and resampling what they exchange.

Two networks rarely agree exactly: a ViT has one stride, a ResNet five stages, a four-stage
transformer strides 4..32. Every student stage is paired with the teacher stage of the nearest
stride (on a log scale, the deeper one on a tie), and the teacher's map or token grid is resampled
to the student's size. When both networks have the same strides the pairing is one to one and
nothing is resampled, so MiT/PVTv2 pairs compute exactly what they always did.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..models.tokens import grid_of  # noqa: F401  (part of this module's API: grids of token counts)


def match_stages(student_strides: tuple[int, ...], teacher_strides: tuple[int, ...]) -> tuple[int, ...]:
    """For each student stage, the index of the teacher stage with the nearest stride."""
    if not teacher_strides:
        return ()
    pairs = []
    for stride in student_strides:
        distances = [abs(math.log2(t) - math.log2(stride)) for t in teacher_strides]
        best = min(distances)
        pairs.append(max(j for j, d in enumerate(distances) if d - best < 1e-9))
    return tuple(pairs)


def resize_map(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """``x`` (B, C, H, W) resampled bilinearly to ``size``; returned unchanged when it fits."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def resize_tokens(tokens: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Tokens (B, N, C) on a ``grid`` resampled to a token grid of ``size``."""
    if tuple(grid) == tuple(size):
        return tokens
    batch, count, width = tokens.shape
    if count != grid[0] * grid[1]:
        raise ValueError(f"{count} tokens do not lie on a {grid[0]}×{grid[1]} grid")
    maps = tokens.transpose(1, 2).reshape(batch, width, grid[0], grid[1])
    return resize_map(maps, size).flatten(2).transpose(1, 2)
