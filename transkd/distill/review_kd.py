"""Knowledge Review (ReviewKD): Chen, Liu, Zhao and Jia, "Distilling Knowledge via Knowledge
Review", CVPR 2021.

A review path runs over the student's stage maps from the deepest to the shallowest. Each
attention-based fusion (ABF) unit projects its stage to a mid width (1×1 conv + BN), fuses it
with the residual handed up from the deeper unit (nearest-upsampled) through two spatial
attention maps (a 1×1 conv over the concatenation, sigmoid), and maps the result to the
teacher's width (3×3 conv + BN). The deepest unit has no residual to fuse. Every output is
compared with the teacher's map of the same stage by the hierarchical context loss (HCL).

Defaults: HCL weight 1.0 (the authors' ``kd_loss_weight``); mid width 64, the width of TransKD's
CSF path (the authors use ``min(512, last student width)`` for classification), so the two
fusion schemes differ only in how they fuse. The authors' warm-up of the loss weight over the
first epochs is a schedule, left to the trainer. Term ``review_hcl`` (not ``hcl``, so that
``review_kd+transkd_base`` can be combined).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..models.conv import Conv2d
from .base import DistillContext, DistillMethod, NetworkInfo
from .kd import check_weight
from .losses import HCL_LEVEL_WEIGHTS, hcl_loss
from .registry import register_method
from .transkd import SampleSafeBatchNorm2d


class AttentionBasedFusion(nn.Module):
    """One ABF unit: ``forward(x, residual)`` returns (output at teacher width, fused map)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.reduce = nn.Sequential(Conv2d(in_channels, mid_channels, 1, bias=False),
                                    SampleSafeBatchNorm2d(mid_channels))
        self.expand = nn.Sequential(Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                    SampleSafeBatchNorm2d(out_channels))
        self.attention = (nn.Sequential(Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid())
                          if fuse else None)
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)
        nn.init.kaiming_uniform_(self.expand[0].weight, a=1)

    def forward(self, x: torch.Tensor,
                residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.reduce(x)
        if self.attention is not None:
            if residual is None:
                raise ValueError("a fusing ABF unit needs the residual of the deeper stage")
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            weights = self.attention(torch.cat([x, residual], dim=1))
            x = x * weights[:, 0:1] + residual * weights[:, 1:2]
        return self.expand(x), x


class ReviewPath(nn.Module):
    """ABF units for every stage; ``forward(features)`` returns outputs shallow → deep."""

    def __init__(self, student_widths: tuple[int, ...], teacher_widths: tuple[int, ...],
                 mid_channels: int) -> None:
        super().__init__()
        last = len(student_widths) - 1
        self.units = nn.ModuleList(
            AttentionBasedFusion(cs, mid_channels, ct, fuse=i < last)
            for i, (cs, ct) in enumerate(zip(student_widths, teacher_widths, strict=True)))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != len(self.units):
            raise ValueError(f"the review path has {len(self.units)} stages, got {len(features)} maps")
        outputs, residual = [], None
        for unit, feature in zip(reversed(self.units), reversed(features)):
            output, residual = unit(feature, residual)
            outputs.append(output)
        return outputs[::-1]


@register_method
class KnowledgeReview(DistillMethod):
    """Review path of ABF units + HCL against the teacher's stage maps. Term ``review_hcl``."""

    name = "review_kd"
    uses_teacher_logits = False

    @dataclass
    class Options:
        hcl_weight: float = 1.0
        mid_channels: int = 64
        #: "fixed" level weights, or "halved" per level used as the reference code does.
        hcl_level_weights: str = "fixed"

        def validate(self) -> None:
            check_weight("hcl_weight", self.hcl_weight)
            if self.hcl_level_weights not in HCL_LEVEL_WEIGHTS:
                raise ValueError(f"hcl_level_weights must be one of {', '.join(HCL_LEVEL_WEIGHTS)}, "
                                 f"got {self.hcl_level_weights!r}")
            if self.mid_channels < 1:
                raise ValueError(f"mid_channels must be a positive integer, got {self.mid_channels}")

    def __init__(self, student: NetworkInfo, teacher: NetworkInfo | None, options: Options) -> None:
        super().__init__(student, teacher, options)
        self.review = ReviewPath(student.widths, self.paired_teacher_widths, options.mid_channels)

    @classmethod
    def needs(cls, options: Options) -> tuple[str, ...]:
        return ("features",)

    def loss_terms(self, ctx: DistillContext) -> dict[str, torch.Tensor]:
        outputs = self.review(ctx.student.features)
        targets = [self.teacher_map(ctx, i, out) for i, out in enumerate(outputs)]
        return {"review_hcl": self.options.hcl_weight * hcl_loss(outputs, targets,
                                                                  self.options.hcl_level_weights)}
