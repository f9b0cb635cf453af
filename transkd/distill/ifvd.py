"""Intra-class feature variation distillation (IFVD): Wang, Zhou, Jiang, Bai and Xu,
"Intra-class Feature Variation Distillation for Semantic Segmentation", ECCV 2020.

For each image, the label map is nearest-resized to the size of a stage map; each class
present gets a prototype, the mean feature of its pixels; each labelled pixel gets the cosine
similarity of its feature to its class prototype (the intra-class feature variation map).
The student's map regresses the teacher's: ``ifvd = loss_weight · mean over labelled pixels
of (sim_s − sim_t)²``. Pixels labelled ``ignore_index`` (or outside the class range) join no
prototype and are left out of the mean (the authors' code keeps them in the denominator with a
zero difference, which only rescales the loss by the labelled fraction).

The similarity is computed within each network, so the student's width never meets the
teacher's: no adapter is needed. Defaults: stage 4 (the last backbone map, as the benchmark
reimplementations use) and weight 200, the default of the authors' code (``--lambda-ifv 200``;
the CIRKD benchmark uses 20). Term ``ifvd``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import DistillContext, DistillMethod, NetworkInfo
from .kd import check_stage_list, check_stages_exist, check_weight
from .losses import full_precision
from .registry import register_method


def resize_labels(targets: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a (B, H, W) label map."""
    if tuple(targets.shape[-2:]) == tuple(size):
        return targets.long()
    return F.interpolate(targets[:, None].float(), size=size, mode="nearest")[:, 0].long()


def prototype_similarity(feature: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """Cosine similarity (B, H, W) of every pixel feature to the mean feature of its class.

    ``onehot`` (B, K, H, W) marks each labelled pixel's class; unlabelled pixels get 0.
    """
    with torch.autocast(feature.device.type, enabled=False):   # the sums stay in fp32
        feature = full_precision(feature)
        onehot = onehot.to(feature.dtype)
        counts = onehot.sum(dim=(2, 3)).clamp_min(1.0)                        # (B, K)
        prototypes = torch.einsum("bkhw,bchw->bkc", onehot, feature) / counts[..., None]
        per_pixel = torch.einsum("bkhw,bkc->bchw", onehot, prototypes)
        return F.cosine_similarity(feature, per_pixel, dim=1, eps=1e-8)


def ifv_loss(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor,
             num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """Mean squared difference of the student's and teacher's prototype-similarity maps over
    labelled pixels (0 if the batch has none)."""
    if student.shape[0] != teacher.shape[0] or student.shape[-2:] != teacher.shape[-2:]:
        raise ValueError(f"student map {tuple(student.shape)} and teacher map "
                         f"{tuple(teacher.shape)} differ in batch or spatial size")
    labels = resize_labels(targets, tuple(student.shape[-2:]))
    valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
    onehot = F.one_hot(torch.where(valid, labels, 0), num_classes).permute(0, 3, 1, 2)
    onehot = onehot * valid[:, None]
    difference = prototype_similarity(student, onehot) - prototype_similarity(teacher, onehot)
    mask = valid.to(difference.dtype)
    return (difference.pow(2) * mask).sum() / mask.sum().clamp_min(1.0)


@register_method
class IntraClassFeatureVariation(DistillMethod):
    """IFVD on one stage map, prototypes from the labels. Term ``ifvd``."""

    name = "ifvd"
    uses_teacher_logits = False
    label_terms = ("ifvd",)  # the class prototypes come from the labels

    @dataclass
    class Options:
        loss_weight: float = 200.0
        stage: int = 4

        def validate(self) -> None:
            check_weight("loss_weight", self.loss_weight)
            check_stage_list("stage", (self.stage,))

    def __init__(self, student: NetworkInfo, teacher: NetworkInfo | None, options: Options) -> None:
        super().__init__(student, teacher, options)
        check_stages_exist(self.name, "stage", (options.stage,), len(student.widths))

    @classmethod
    def needs(cls, options: Options) -> tuple[str, ...]:
        return ("features",)

    def loss_terms(self, ctx: DistillContext) -> dict[str, torch.Tensor]:
        index = self.options.stage - 1
        student_map = ctx.student.features[index]
        loss = ifv_loss(student_map, self.teacher_map(ctx, index, student_map), ctx.targets,
                        self.student_info.num_classes, ctx.ignore_index)
        return {"ifvd": self.options.loss_weight * loss}
