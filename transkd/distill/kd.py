"""Pixel-wise knowledge distillation: Hinton et al., "Distilling the Knowledge in a Neural
Network" (NIPS Deep Learning Workshop 2015), applied to every pixel of the logit map.

``kd = loss_weight · T² · mean over pixels of KL(softmax(t/T) ‖ softmax(s/T))``, the KL summed
over classes. Every pixel counts, labelled or not: the teacher's soft label exists everywhere.

Defaults T = 1, weight 1 follow the segmentation distillation benchmark of CIRKD (Yang et al.,
CVPR 2022; ``--kd-temperature 1.0`` and ``--lambda-kd 1.0`` in its ``train_kd`` scripts), whose
per-pixel ``batchmean`` normalisation this matches. The pixel-wise terms of SKD and IFVD use
T = 1 as well; T = 4, common for image classification, is not the segmentation default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import DistillContext, DistillMethod
from .losses import full_precision
from .registry import register_method


def pixelwise_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                 temperature: float = 1.0) -> torch.Tensor:
    """``T² · mean over (batch, pixels) of KL(softmax(t/T) ‖ softmax(s/T))`` in fp32."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    log_p_s = F.log_softmax(full_precision(student_logits) / temperature, dim=1)
    log_p_t = F.log_softmax(full_precision(teacher_logits) / temperature, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    return kl.mean() * temperature ** 2


# Option checks shared by the baseline methods (``Options.validate`` raises ValueError, which
# the option parser turns into a ConfigError naming the method).

def check_positive(name: str, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_weight(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_stage_list(name: str, stages: tuple[int, ...]) -> None:
    """Non-empty, no repeats, counted from 1 (the upper bound needs the network: see
    :func:`check_stages_exist`)."""
    if not stages:
        raise ValueError(f"{name} must name at least one stage")
    if len(set(stages)) != len(stages):
        raise ValueError(f"{name} names a stage twice: {stages}")
    if min(stages) < 1:
        raise ValueError(f"{name} counts stages from 1, got {stages}")


def check_stages_exist(method: str, name: str, stages: tuple[int, ...], num_stages: int) -> None:
    if max(stages) > num_stages:
        raise ConfigError(f"method {method!r} option {name!r} {stages} names a stage beyond the "
                          f"networks' {num_stages} stages")


@register_method
class PixelwiseKD(DistillMethod):
    """Hinton KD on every pixel of the logits; no adapters. Term ``kd``."""

    name = "kd"

    @dataclass
    class Options:
        temperature: float = 1.0
        loss_weight: float = 1.0

        def validate(self) -> None:
            check_positive("temperature", self.temperature)
            check_weight("loss_weight", self.loss_weight)

    def loss_terms(self, ctx: DistillContext) -> dict[str, torch.Tensor]:
        loss = pixelwise_kl(ctx.student.logits, ctx.teacher_logits(), self.options.temperature)
        return {"kd": self.options.loss_weight * loss}
