"""Structured knowledge distillation (SKD): Liu, Chen, Liu, Qin, Luo and Wang, "Structured
Knowledge Distillation for Semantic Segmentation", CVPR 2019.

- Pair-wise (term ``skd_pair``): a stage map is max-pooled into a coarse grid of nodes (each
  node covers ``pool_scale`` of the height and of the width, so 0.5 gives 2×2 nodes), the
  similarity ``a_ij = f_iᵀ f_j / ((‖f_i‖ + 1e-8)(‖f_j‖ + 1e-8))`` of every pair of nodes forms
  an N×N matrix per image, and the student's matrix regresses the teacher's: mean over
  (batch, N, N) of the squared difference (the paper's ``1/(W'H')² Σ (a^s − a^t)²``, averaged
  over the batch). As in the authors' code the norms are constants to autograd (detached): the
  gradient moves the features, not their lengths' normalisation. No adapter is needed: the
  similarity does not depend on the channel width.
- Pixel-wise (term ``skd_pixel``): the paper's ``1/(W'H') Σ_i KL(q_i^t ‖ q_i^s)`` per image,
  *summed* over the batch as the authors' code does (their cross-entropy differs from this KL
  by the teacher's entropy, a constant: the gradients agree). Unlike ``kd`` it is not a mean
  over the batch, so the weight 10 acts on ``batch ×`` the per-pixel mean.
- Holistic (term ``skd_holistic``, off by default): a Wasserstein critic scores
  (class probabilities, image) pairs; teacher pairs count as real, student pairs as fake.
  The paper trains the critic with its own optimiser; here it trains inside the one optimiser
  through a gradient-reversal layer. The term's value is ``w · (D(student) − D(teacher))``: the
  critic's parameters descend it (critic loss), while the reversed gradient makes the student
  ascend ``D(student)`` (generator loss ``−w · D(student)``). Spectral normalisation of every
  critic convolution keeps the critic 1-Lipschitz (the authors add a gradient penalty; spectral
  norm gives the same constraint without a second backward pass). The term can be negative.

Defaults are the authors' code defaults (``train_options.py``): pixel weight 10, pair weight
1.0, pooling scale 0.5, holistic weight 0.1. Their run script uses pair weight 0.5; the CIRKD
benchmark (Yang et al., CVPR 2022) uses 10 with 2×2-pixel nodes. Default map: stage 4.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .base import DistillContext, DistillMethod, NetworkInfo
from .kd import check_positive, check_stage_list, check_stages_exist, check_weight, pixelwise_kl
from .losses import full_precision
from .registry import register_method

#: Added to every node's norm before dividing (the authors' ``L2`` helper).
NORM_EPS = 1e-8


def node_similarity(feature: torch.Tensor, pool_scale: float) -> torch.Tensor:
    """Similarity matrix (B, N, N) of the max-pooled nodes of a map (B, C, H, W): each node
    divided by its norm + 1e-8, the norm detached (the published loss)."""
    height, width = feature.shape[-2:]
    kernel = (max(1, int(height * pool_scale)), max(1, int(width * pool_scale)))
    with torch.autocast(feature.device.type, enabled=False):   # the product stays in fp32
        nodes = F.max_pool2d(full_precision(feature), kernel, stride=kernel, ceil_mode=True)
        nodes = nodes.flatten(2)
        nodes = nodes / (nodes.norm(dim=1, keepdim=True).detach() + NORM_EPS)
        return nodes.transpose(1, 2) @ nodes


def pixelwise_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                         temperature: float = 1.0) -> torch.Tensor:
    """``T² · Σ_{batch, pixels} KL(softmax(t/T) ‖ softmax(s/T)) / (H·W)``: per image the
    paper's mean over pixels, summed over the batch as the authors' code."""
    per_image_mean = pixelwise_kl(student_logits, teacher_logits, temperature)
    return per_image_mean * student_logits.shape[0]


def pairwise_similarity_loss(student: torch.Tensor, teacher: torch.Tensor,
                             pool_scale: float = 0.5) -> torch.Tensor:
    """Mean squared difference of the node similarity matrices of two maps."""
    if student.shape[0] != teacher.shape[0] or student.shape[-2:] != teacher.shape[-2:]:
        raise ValueError(f"student map {tuple(student.shape)} and teacher map "
                         f"{tuple(teacher.shape)} differ in batch or spatial size")
    return (node_similarity(student, pool_scale) - node_similarity(teacher, pool_scale)).pow(2).mean()


class _ReverseGradient(torch.autograd.Function):
    """Identity forward, negated gradient backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return -grad


def reverse_gradient(x: torch.Tensor) -> torch.Tensor:
    return _ReverseGradient.apply(x)


class WassersteinCritic(nn.Module):
    """Small spectrally normalised conv critic: three stride-2 3×3 convs with LeakyReLU, then
    a bias-free 3×3 conv to one channel averaged over space → one score per image."""

    def __init__(self, in_channels: int, width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for multiple in (1, 2, 4):
            layers += [spectral_norm(nn.Conv2d(channels, width * multiple, 3, stride=2, padding=1)),
                       nn.LeakyReLU(0.2)]
            channels = width * multiple
        # no bias: a constant offset cancels in D(student) − D(teacher) and would never train
        layers.append(spectral_norm(nn.Conv2d(channels, 1, 3, padding=1, bias=False)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).mean(dim=(1, 2, 3))


def critic_input(logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Class probabilities with the image (average-pooled to the logit size) as condition."""
    condition = F.adaptive_avg_pool2d(full_precision(images), logits.shape[-2:])
    return torch.cat([full_precision(logits).softmax(dim=1), condition], dim=1)


@register_method
class StructuredKD(DistillMethod):
    """Pair-wise + pixel-wise (+ optional holistic) distillation."""

    name = "skd"

    @dataclass
    class Options:
        pair_weight: float = 1.0
        pixel_weight: float = 10.0
        temperature: float = 1.0          # of the pixel-wise term
        pool_scale: float = 0.5           # node size as a fraction of the map's height/width
        stage: int = 4                    # stage map of the pair-wise term
        holistic: bool = False
        holistic_weight: float = 0.1
        critic_width: int = 64

        def validate(self) -> None:
            check_weight("pair_weight", self.pair_weight)
            check_weight("pixel_weight", self.pixel_weight)
            check_positive("temperature", self.temperature)
            if not 0 < self.pool_scale <= 1:
                raise ValueError(f"pool_scale must be in (0, 1], got {self.pool_scale!r}")
            check_stage_list("stage", (self.stage,))
            check_weight("holistic_weight", self.holistic_weight)
            if self.critic_width < 1:
                raise ValueError(f"critic_width must be a positive integer, got {self.critic_width}")

    def __init__(self, student: NetworkInfo, teacher: NetworkInfo | None, options: Options) -> None:
        super().__init__(student, teacher, options)
        check_stages_exist(self.name, "stage", (options.stage,), len(student.widths))
        self.critic = (WassersteinCritic(student.num_classes + student.in_chans, options.critic_width)
                       if options.holistic else None)

    @classmethod
    def needs(cls, options: Options) -> tuple[str, ...]:
        return ("logits", "features")

    def loss_terms(self, ctx: DistillContext) -> dict[str, torch.Tensor]:
        opts = self.options
        index = opts.stage - 1
        student_map = ctx.student.features[index]
        teacher_logits = ctx.teacher_logits()
        terms = {
            "skd_pair": opts.pair_weight * pairwise_similarity_loss(
                student_map, self.teacher_map(ctx, index, student_map), opts.pool_scale),
            "skd_pixel": opts.pixel_weight * pixelwise_divergence(
                ctx.student.logits, teacher_logits, opts.temperature),
        }
        if self.critic is not None:
            fake = critic_input(reverse_gradient(ctx.student.logits), ctx.images)
            real = critic_input(teacher_logits, ctx.images)
            scores = self.critic(torch.cat([fake, real]))
            fake_score, real_score = scores.split(len(fake))
            terms["skd_holistic"] = opts.holistic_weight * (fake_score.mean() - real_score.mean())
        return terms
