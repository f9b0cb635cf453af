"""Loss functions shared by several distillation methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Pooling sizes and weights of the hierarchical context loss (Knowledge Review / TransKD).
HCL_LEVELS: tuple[tuple[int, float], ...] = ((4, 0.5), (2, 0.25), (1, 0.125))


def full_precision(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in at least fp32: half-precision (AMP) values are upcast so that losses sum in
    fp32, while fp64 stays fp64 (the pinned-loss tests run in fp64, where every CPU agrees)."""
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()


#: How HCL weighs its pooled levels: "fixed" (each level its own weight) or "halved" (the
#: Knowledge Review / TransKD code: 1/2 for the first level used, halved for each further one).
HCL_LEVEL_WEIGHTS = ("fixed", "halved")


def hcl_stage_loss(student: torch.Tensor, teacher: torch.Tensor,
                   levels: tuple[tuple[int, float], ...] = HCL_LEVELS,
                   level_weights: str = "fixed") -> torch.Tensor:
    """Hierarchical context loss of one stage: MSE at full size plus MSE of adaptive-average
    pooled maps at each level smaller than the map, normalised by the sum of weights used.

    "Smaller" compares the level with the map's height. With ``level_weights="fixed"`` each
    level keeps its own weight (1/2 for 4×4, 1/4 for 2×2, 1/8 for 1×1). ``"halved"`` is the
    Knowledge Review / TransKD code, which halves the weight per level *used*; the two differ
    only for maps at most 4 rows high (e.g. stage 4 of a 128-pixel input): at the paper's sizes
    every level is used and both agree.
    """
    if level_weights not in HCL_LEVEL_WEIGHTS:
        raise ValueError(f"level_weights must be one of {', '.join(HCL_LEVEL_WEIGHTS)}, "
                         f"got {level_weights!r}")
    student, teacher = full_precision(student), full_precision(teacher)
    loss = F.mse_loss(student, teacher)
    total = 1.0
    halved = 1.0
    height = student.shape[2]
    for size, weight in levels:
        if size >= height:
            continue
        if level_weights == "halved":
            halved /= 2.0
            weight = halved
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(student, size),
                                          F.adaptive_avg_pool2d(teacher, size))
        total += weight
    return loss / total


def hcl_loss(students: list[torch.Tensor], teachers: list[torch.Tensor],
             level_weights: str = "fixed") -> torch.Tensor:
    """Sum of :func:`hcl_stage_loss` over paired stages."""
    return sum(hcl_stage_loss(s, t, level_weights=level_weights)
               for s, t in zip(students, teachers, strict=True))
