"""Augmentation-free dense contrastive distillation (Af-DCD): Fan, Li, Liu, Song and Yao,
"Augmentation-free Dense Contrastive Knowledge Distillation for Efficient Semantic
Segmentation", NeurIPS 2023.

On one stage map (default stage 4): the student's map, through a 1×1 convolution to the
teacher's width where the widths differ, is masked (each position zeroed with probability
``mask_ratio``, or a fixed centre third with ``random_mask: false``) and passed through a
projector (two 3×3 convolutions with a ReLU between; the "enhanced" one of the authors' code
with ``enhanced_projector``). Its output ``P`` is compared with the teacher's map ``T``:

- masked feature mimicking (term ``af_dcd_feat``): ``Σ (P − T)² / B``;
- omni-contrasting (term ``af_dcd_contrast``): both maps max-pooled ``pool_size``×``pool_size``,
  cut into ``patch_size``×``patch_size`` patches and their channels into ``groups`` groups. In a
  patch every (position, group) vector of ``P`` is an anchor; its positive is the teacher's
  vector at the same position and group, its negatives the teacher's vectors of every *other*
  group at any position of the patch; similarity is the negative L1 distance. The loss is the
  InfoNCE cross-entropy at temperature ``tau``, summed over anchors and divided by the pooled
  ``H·W`` and by ``B``. No augmented view is needed: the contrast is across positions and
  channel groups of one image.
- pixel-wise KD on the logits (term ``af_dcd_kd``), part of the paper's objective; set
  ``kd_weight: 0`` when combining with ``kd``.

Defaults: the authors' code (``train_ocmgd.py``): feature weight 4e-5, contrast weight 1e-3,
τ = 0.07, 16 groups, 4×4 pooling and patches, mask ratio 0.75. Their Cityscapes DeepLabV3 run
uses 2e-6, 5e-3 and the enhanced projector. To serve any pair, the pooling and the patch shrink
to the map where it is smaller, and a map not a multiple of the patch loses its last rows and
columns (the authors' sizes always divide).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.conv import Conv2d
from .base import DistillContext, DistillMethod, NetworkInfo
from .kd import check_positive, check_stage_list, check_stages_exist, check_weight, pixelwise_kl
from .losses import full_precision
from .registry import register_method


def to_patch_rows(x: torch.Tensor, groups: int, patch: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) → (B·patches, ph·pw·groups, C/groups): row ``n·groups + g`` is channel
    group ``g`` at position ``n`` (row-major) of a patch."""
    b, c, h, w = x.shape
    ph, pw = patch
    x = x.reshape(b, groups, c // groups, h // ph, ph, w // pw, pw)
    x = x.permute(0, 3, 5, 4, 6, 1, 2)            # B, Hp, Wp, ph, pw, groups, C/groups
    return x.reshape(b * (h // ph) * (w // pw), ph * pw * groups, c // groups)


def omni_contrastive_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float, groups: int,
                          pool_size: int = 4, patch_size: int = 4) -> torch.Tensor:
    """InfoNCE over (position, channel group) vectors of each patch, negatives from the other
    groups; summed over anchors, divided by the pooled H·W and the batch."""
    with torch.autocast(student.device.type, enabled=False):
        student, teacher = full_precision(student), full_precision(teacher)
        if pool_size > 1:
            kernel = min(pool_size, student.shape[-2], student.shape[-1])
            student, teacher = F.max_pool2d(student, kernel), F.max_pool2d(teacher, kernel)
        ph, pw = min(patch_size, student.shape[-2]), min(patch_size, student.shape[-1])
        h, w = student.shape[-2] // ph * ph, student.shape[-1] // pw * pw
        student, teacher = student[..., :h, :w], teacher[..., :h, :w]
        rows_s = to_patch_rows(student, groups, (ph, pw))
        rows_t = to_patch_rows(teacher, groups, (ph, pw))
        similarity = -torch.cdist(rows_s, rows_t, p=1) / tau               # (P, R, R)
        group = torch.arange(rows_s.shape[1], device=student.device) % groups
        considered = (group[:, None] != group[None, :]) | torch.eye(
            len(group), dtype=torch.bool, device=student.device)
        logits = similarity.masked_fill(~considered, float("-inf"))
        positive = torch.diagonal(similarity, dim1=1, dim2=2)
        loss = (torch.logsumexp(logits, dim=2) - positive).sum()
        return loss / (h * w) / student.shape[0]


class EnhancedProjector(nn.Module):
    """Two stacked 3×3 conv + ReLU blocks, each read out by its own 3×3 conv, averaged."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.block1 = nn.Sequential(Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True))
        self.block2 = nn.Sequential(Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True))
        self.head1 = Conv2d(width, width, 3, padding=1)
        self.head2 = Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.block1(x)
        second = self.block2(first)
        return (self.head1(first) + self.head2(second)) / 2


def projector(width: int, enhanced: bool) -> nn.Module:
    if enhanced:
        return EnhancedProjector(width)
    return nn.Sequential(Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
                         Conv2d(width, width, 3, padding=1))


def feature_mask(shape: torch.Size, ratio: float, random: bool, device: torch.device,
                 dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, H, W) of 0/1: zero with probability ``ratio``, or on the centre third."""
    b, _, h, w = shape
    if random:
        return (torch.rand(b, 1, h, w, device=device) <= 1 - ratio).to(dtype)
    mask = torch.ones(b, 1, h, w, device=device, dtype=dtype)
    mask[:, :, h // 3:2 * h // 3, w // 3:2 * w // 3] = 0
    return mask


@register_method
class AugmentationFreeDenseContrastiveKD(DistillMethod):
    """Af-DCD: masked feature mimicking, omni-contrasting and logit KD."""

    name = "af_dcd"

    @dataclass
    class Options:
        stage: int = 4
        kd_weight: float = 1.0
        kd_temperature: float = 1.0
        feature_weight: float = 4e-5
        contrast_weight: float = 1e-3
        tau: float = 0.07
        groups: int = 16                   # channel groups of the contrast
        pool_size: int = 4
        patch_size: int = 4
        mask_ratio: float = 0.75
        random_mask: bool = True
        enhanced_projector: bool = False

        def validate(self) -> None:
            check_stage_list("stage", (self.stage,))
            for name in ("kd_weight", "feature_weight", "contrast_weight"):
                check_weight(name, getattr(self, name))
            check_positive("kd_temperature", self.kd_temperature)
            check_positive("tau", self.tau)
            for name in ("groups", "pool_size", "patch_size"):
                if getattr(self, name) < 1:
                    raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
            if not 0 <= self.mask_ratio < 1:
                raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio!r}")

    def __init__(self, student: NetworkInfo, teacher: NetworkInfo | None, options: Options) -> None:
        super().__init__(student, teacher, options)
        check_stages_exist(self.name, "stage", (options.stage,), len(student.widths))
        width = self.paired_teacher_widths[options.stage - 1]
        if width % options.groups:
            raise ConfigError(f"method 'af_dcd' option 'groups' ({options.groups}) must divide the "
                              f"teacher's width {width} at stage {options.stage}")
        student_width = student.widths[options.stage - 1]
        self.align = (Conv2d(student_width, width, 1) if student_width != width  # with bias,
                      else nn.Identity())                                           # as the authors

        self.projector = projector(width, options.enhanced_projector)

    @classmethod
    def needs(cls, options: Options) -> tuple[str, ...]:
        return ("logits", "features") if options.kd_weight > 0 else ("features",)

    def loss_terms(self, ctx: DistillContext) -> dict[str, torch.Tensor]:
        opts = self.options
        index = opts.stage - 1
        aligned = self.align(ctx.student.features[index])
        teacher = self.teacher_map(ctx, index, aligned)
        mask = feature_mask(aligned.shape, opts.mask_ratio, opts.random_mask, aligned.device, aligned.dtype)
        mimic = self.projector(aligned * mask)
        feat = (full_precision(mimic) - full_precision(teacher)).pow(2).sum() / aligned.shape[0]
        terms = {
            "af_dcd_feat": opts.feature_weight * feat,
            "af_dcd_contrast": opts.contrast_weight * omni_contrastive_loss(
                mimic, teacher, opts.tau, opts.groups, opts.pool_size, opts.patch_size),
        }
        if opts.kd_weight > 0:
            terms["af_dcd_kd"] = opts.kd_weight * pixelwise_kl(
                ctx.student.logits, ctx.teacher_logits(), opts.kd_temperature)
        return terms
