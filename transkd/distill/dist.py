"""DIST: Huang, You, Wang, Qian and Xu, "Knowledge Distillation from A Stronger Teacher",
NeurIPS 2022.

Instead of matching probabilities exactly (KL), the student matches their *relations*, which
tolerates a large teacher–student gap. With ``p = softmax(logits / τ)`` and every pixel of the
batch a row of a (B·H·W, K) matrix:

- inter-class relation (term ``dist_inter``): ``β·τ² · (1 − mean over pixels of the Pearson
  correlation across classes)``;
- intra-class relation (term ``dist_intra``): ``γ·τ² · (1 − mean over classes of the Pearson
  correlation across all pixels of the batch)``.

Defaults β = γ = 1, τ = 1 are the authors' Cityscapes segmentation setting (``DIST()`` with its
defaults, no temperature, ``--lambda-kd 1`` in their ``segmentation/train_kd.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import DistillContext, DistillMethod
from .kd import check_positive, check_weight
from .losses import full_precision
from .registry import register_method


def pearson_correlation(a: torch.Tensor, b: torch.Tensor, dim: int, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of ``a`` and ``b`` along ``dim``."""
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    return (a * b).sum(dim=dim) / (a.norm(dim=dim) * b.norm(dim=dim) + eps)


def relation_losses(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    tau: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(inter-class, intra-class) relation losses ``1 − mean Pearson`` of (B, K, H, W) logits,
    each × τ²."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    classes = student_logits.shape[1]
    p_s = (full_precision(student_logits) / tau).softmax(dim=1).movedim(1, -1).reshape(-1, classes)
    p_t = (full_precision(teacher_logits) / tau).softmax(dim=1).movedim(1, -1).reshape(-1, classes)
    inter = 1 - pearson_correlation(p_s, p_t, dim=1).mean()
    intra = 1 - pearson_correlation(p_s, p_t, dim=0).mean()
    return inter * tau ** 2, intra * tau ** 2


@register_method
class RelationDistillation(DistillMethod):
    """DIST on the logits. Terms ``dist_inter`` and ``dist_intra``."""

    name = "dist"

    @dataclass
    class Options:
        beta: float = 1.0    # weight of the inter-class relation
        gamma: float = 1.0   # weight of the intra-class relation
        tau: float = 1.0

        def validate(self) -> None:
            check_weight("beta", self.beta)
            check_weight("gamma", self.gamma)
            check_positive("tau", self.tau)

    def loss_terms(self, ctx: DistillContext) -> dict[str, torch.Tensor]:
        inter, intra = relation_losses(ctx.student.logits, ctx.teacher_logits(), self.options.tau)
        return {"dist_inter": self.options.beta * inter, "dist_intra": self.options.gamma * intra}
