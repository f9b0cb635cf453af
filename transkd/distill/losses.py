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
    used, halved = [], 1.0
    height, width = student.shape[2:]
    for size, weight in levels:
        if size >= height:
            continue
        if level_weights == "halved":
            halved /= 2.0
            weight = halved
        used.append((size, weight))
    total = 1.0 + sum(weight for _, weight in used)
    if all(height % size == 0 and width % size == 0 for size, _ in used):
        return _BlockContextMSE.apply(student - teacher, tuple(used)) / total
    loss = F.mse_loss(student, teacher)
    for size, weight in used:
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(student, size),
                                          F.adaptive_avg_pool2d(teacher, size))
    return loss / total


def _blocks(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) as a (B, C, size, H/size, size, W/size) view: a size×size grid of blocks."""
    return x.unflatten(3, (size, x.shape[3] // size)).unflatten(2, (size, x.shape[2] // size))


class _BlockContextMSE(torch.autograd.Function):
    """``mean(d²) + Σ w · mean(pool_s(d)²)`` of a difference map ``d`` whose height and width
    every pooled size ``s`` divides, where ``pool_s`` (adaptive average pooling) is the mean of
    each block of an s×s grid: the MSE of pooled maps is that of the pooled difference, pooling
    being linear. The backward writes the gradient in one pass over ``d``'s own memory layout
    (2d/N plus each level's block gradient broadcast in place), where autograd through
    ``adaptive_avg_pool2d`` would expand each level to a full map in another layout and add them
    (for a TransKD step at 256×512 on a CPU: about three times the time)."""

    @staticmethod
    def forward(ctx, diff: torch.Tensor, levels: tuple[tuple[int, float], ...]) -> torch.Tensor:
        pooled: list[torch.Tensor] = []
        for size, _ in levels:
            # A coarser grid whose blocks are unions of a finer one's: pool the small pooled map.
            finer = next((p for p in pooled if p.shape[2] % size == 0), diff)
            pooled.append(_blocks(finer, size).mean(dim=(3, 5)))
        loss = diff.square().mean()
        for (_, weight), p in zip(levels, pooled):
            loss = loss + weight * p.square().mean()
        ctx.save_for_backward(diff, *pooled)
        ctx.levels = levels
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        diff, *pooled = ctx.saved_tensors
        grad = diff * (grad_loss * (2.0 / diff.numel()))
        for (size, weight), p in zip(ctx.levels, pooled):
            # d mean(p²)/d p = 2p / p.numel(); each of a block's pixels moves p by 1/block area.
            area = (diff.shape[2] // size) * (diff.shape[3] // size)
            step = p * (grad_loss * (2.0 * weight / (p.numel() * area)))
            _blocks(grad, size).add_(step[:, :, :, None, :, None])
        return grad, None


def hcl_loss(students: list[torch.Tensor], teachers: list[torch.Tensor],
             level_weights: str = "fixed") -> torch.Tensor:
    """Sum of :func:`hcl_stage_loss` over paired stages."""
    return sum(hcl_stage_loss(s, t, level_weights=level_weights)
               for s, t in zip(students, teachers, strict=True))
