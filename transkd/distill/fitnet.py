"""FitNets hints: Romero, Ballas, Kahou, Chassang, Gatta and Bengio, "FitNets: Hints for Thin
Deep Nets", ICLR 2015.

A regressor maps a student ("guided") map to the teacher's ("hint") width and the two are
compared by mean squared error: ``fitnet = loss_weight · mean over stages of MSE(r_i(F_s_i), F_t_i)``.
The regressor is a 1×1 convolution without bias, one per chosen stage.

Which layer: FitNets takes a middle layer (and trains the hint in a separate first stage). The
segmentation distillation benchmarks train the hint jointly on the last backbone map, with
weight 10 (CIRKD, Yang et al., CVPR 2022: ``--lambda-fitnet 10.``); that is the default here,
``stages=(4,)``. ``stages=(2,)`` or ``(3,)`` gives the paper's middle-layer hint, several
stages average their losses so the weight keeps its meaning. Term ``fitnet``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..models.conv import Conv2d
from .base import DistillContext, DistillMethod, NetworkInfo
from .kd import check_stage_list, check_stages_exist, check_weight
from .losses import full_precision
from .registry import register_method


@register_method
class FitNetHints(DistillMethod):
    """1×1-conv hint regressors + MSE on the chosen stage maps. Term ``fitnet``."""

    name = "fitnet"
    uses_teacher_logits = False

    @dataclass
    class Options:
        loss_weight: float = 10.0
        stages: tuple[int, ...] = (4,)

        def validate(self) -> None:
            check_weight("loss_weight", self.loss_weight)
            check_stage_list("stages", self.stages)

    def __init__(self, student: NetworkInfo, teacher: NetworkInfo | None, options: Options) -> None:
        super().__init__(student, teacher, options)
        check_stages_exist(self.name, "stages", options.stages, len(student.widths))
        self.stages = tuple(sorted(options.stages))
        self.regressors = nn.ModuleDict({
            f"stage{i}": Conv2d(student.widths[i - 1], self.paired_teacher_widths[i - 1], 1, bias=False)
            for i in self.stages})

    @classmethod
    def needs(cls, options: Options) -> tuple[str, ...]:
        return ("features",)

    def loss_terms(self, ctx: DistillContext) -> dict[str, torch.Tensor]:
        losses = []
        for i in self.stages:
            guided = self.regressors[f"stage{i}"](ctx.student.features[i - 1])
            hint = self.teacher_map(ctx, i - 1, guided)
            if guided.shape != hint.shape:
                raise ValueError(f"stage {i}: regressed student map {tuple(guided.shape)} does not "
                                 f"match the teacher's {tuple(hint.shape)}")
            losses.append(F.mse_loss(full_precision(guided), full_precision(hint)))
        return {"fitnet": self.options.loss_weight * torch.stack(losses).mean()}
