"""TransKD (Liu et al., T-ITS): distil stage features through Cross Selective Fusion (CSF) and
patch embeddings through Patch Embedding Alignment (PEA), optionally refined by the
Global-Local Context Mixer (GL-Mixer) or the Embedding Assistant (EA).

Registered methods (all train-only; the deployed student is the plain network):

- ``transkd_base``: CSF + hierarchical context loss (HCL) + PEA on the chosen stages.
- ``transkd_gl``:   ``transkd_base`` with the GL-Mixer on the last stage's embedding.
- ``transkd_ea``:   ``transkd_base`` with the Embedding Assistant mixed into PEA.
- ``csf_only``:     CSF + HCL (ablation).
- ``pea_only``:     PEA only (ablation).

Loss terms: ``hcl`` (already × ``hcl_weight``) and ``embed_<stage>`` (already × its entry of
``embed_weights``), stages counted from 1.

Sizes (MiT-B2 teacher → MiT-B0 student): CSF 644,160 parameters, PEA 193,536, GL-Mixer 656,130,
EA 970,952. The authors' CSF additionally holds a BatchNorm-free copy of the squeeze convolution
of each fusing unit (3 × Conv1x1(64→32) = 6,144 parameters) that their code switches to when a
batch holds a single sample; this implementation has no such branch (see
:class:`SampleSafeBatchNorm2d`), so its training-time counts are 6,144 parameters below the
paper's (4.557 M vs 4.563 M for Base); MACs differ by a few hundred (that branch runs on
1×1 maps), so 16.46/16.80/17.84 G match the paper's 16.47/16.80/17.84 G.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.conv import Conv2d
from ..models.layers import OverlapPatchEmbed, init_transformer_weights
from ..models.linear import Linear
from .base import DistillContext, DistillMethod, NetworkInfo
from .losses import HCL_LEVEL_WEIGHTS, full_precision, hcl_loss
from .registry import register_method

# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


class SampleSafeBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that stays defined when a training batch holds one value per channel.

    Batch statistics of a single value are meaningless (PyTorch refuses them), which happens to
    CSF's channel-attention squeeze (a pooled ``(B, M, 1, 1)`` vector) for a batch of one. In
    that case this layer normalises with its running statistics, uses the same affine weights
    and leaves the running statistics untouched; with more than one value per channel it is an
    ordinary BatchNorm. The parameters never change with the batch size, unlike the reference
    code, which swaps in a separate BatchNorm-free convolution for single-sample batches.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.numel() == x.shape[1]:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                training=False, momentum=0.0, eps=self.eps)
        return super().forward(x)


class SelectiveFusionUnit(nn.Module):
    """One CSF unit: project a student stage to the mid width, fuse it with the deeper stage's
    residual through selective-kernel channel attention, and map it to the teacher width."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool,
                 reduction: int = 16, min_hidden: int = 32) -> None:
        super().__init__()
        # models.conv.Conv2d: nn.Conv2d with a faster weight gradient for channels-last maps.
        self.reduce = nn.Sequential(Conv2d(in_channels, mid_channels, 1, bias=False),
                                    SampleSafeBatchNorm2d(mid_channels))
        self.expand = nn.Sequential(
            Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
            SampleSafeBatchNorm2d(out_channels))
        self.fuse = fuse
        if fuse:
            hidden = max(mid_channels // reduction, min_hidden)
            self.squeeze = nn.Sequential(nn.Conv2d(mid_channels, hidden, 1, bias=False),
                                         SampleSafeBatchNorm2d(hidden), nn.ReLU(inplace=True))
            # One conv yields both branches' logits (two Conv1x1(L→M) stacked: same weights).
            self.select = nn.Conv2d(hidden, 2 * mid_channels, 1)
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)
        nn.init.kaiming_uniform_(self.expand[0].weight, a=1)

    def forward(self, x: torch.Tensor, deeper: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (output at the teacher width, fused mid-width map passed to the next unit)."""
        x = self.reduce(x)
        if self.fuse:
            if deeper is None:
                raise ValueError("a fusing CSF unit needs the deeper stage's fused map")
            deeper = F.interpolate(deeper, size=x.shape[-2:], mode="nearest")
            summary = F.adaptive_avg_pool2d(x + deeper, 1)
            logits = self.select(self.squeeze(summary))
            weights = logits.unflatten(1, (2, -1)).softmax(dim=1)  # (B, 2, M, 1, 1)
            x = weights[:, 0] * x + weights[:, 1] * deeper
        return self.expand(x), x


class CrossSelectiveFusion(nn.Module):
    """CSF: a review path from the deepest stage to the shallowest; every stage's output has
    the teacher's width and the student's (= teacher's) resolution."""

    def __init__(self, student_widths: tuple[int, ...], teacher_widths: tuple[int, ...],
                 mid_channels: int = 64, reduction: int = 16, min_hidden: int = 32) -> None:
        super().__init__()
        last = len(student_widths) - 1
        self.units = nn.ModuleList(
            SelectiveFusionUnit(cs, mid_channels, ct, fuse=i < last, reduction=reduction,
                                min_hidden=min_hidden)
            for i, (cs, ct) in enumerate(zip(student_widths, teacher_widths, strict=True)))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != len(self.units):
            raise ValueError(f"CSF expects {len(self.units)} stage maps, got {len(features)}")
        outputs: list[torch.Tensor] = []
        fused = None
        for unit, feature in zip(reversed(self.units), reversed(features)):
            out, fused = unit(feature, fused)
            outputs.append(out)
        return outputs[::-1]


class PatchEmbeddingAlignment(nn.Module):
    """PEA: a token-wise Linear(Cs_i → Ct_i) per selected stage (1-based stage keys)."""

    def __init__(self, student_widths: tuple[int, ...], teacher_widths: tuple[int, ...],
                 stages: tuple[int, ...]) -> None:
        super().__init__()
        self.stages = tuple(stages)
        self.proj = nn.ModuleDict({f"stage{s}": Linear(student_widths[s - 1], teacher_widths[s - 1])
                                   for s in self.stages})

    def forward(self, stage: int, embedding: torch.Tensor) -> torch.Tensor:
        return self.proj[f"stage{stage}"](embedding)


class GlobalLocalMixer(nn.Module):
    """GL-Mixer: ``α · MHSA(E) + β · Conv1d_a(E) ⊙ σ(Conv1d_b(E))`` on a token sequence.

    The attention has no LayerNorm and no residual (as in the paper); its qkv projection has no
    bias. The convolutions run along the flattened token order. α and β are learnable scalars
    initialised to ``alpha``/``beta`` (0.5 each by default: a convex mix whose output starts at
    the scale of one branch; the reference code leaves them uninitialised).
    """

    def __init__(self, dim: int, num_heads: int = 8, kernel_size: int = 3, alpha: float = 0.5,
                 beta: float = 0.5, residual: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"GL-Mixer width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = Linear(dim, 3 * dim, bias=False)
        self.proj = Linear(dim, dim)
        self.local_value = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2)
        self.local_gate = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2)
        self.alpha = nn.Parameter(torch.full((1,), float(alpha)))
        self.beta = nn.Parameter(torch.full((1,), float(beta)))
        self.residual = residual

    def global_context(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, dim = tokens.shape
        qkv = self.qkv(tokens).reshape(batch, length, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))

    def local_context(self, tokens: torch.Tensor) -> torch.Tensor:
        seq = tokens.transpose(1, 2)
        return (self.local_value(seq) * torch.sigmoid(self.local_gate(seq))).transpose(1, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mixed = self.alpha * self.global_context(tokens) + self.beta * self.local_context(tokens)
        return mixed + tokens if self.residual else mixed


class EmbeddingAssistant(nn.Module):
    """EA: extra patch embedders at the teacher's widths, fed with the student's stage inputs
    (the image for stage 1, the student's stage ``i-1`` map for stage ``i``), mixed with PEA's
    output by learned scalars: ``Ê_i = w_i · PEA_i(E_i) + w_{i+n} · EA_i(input_i)``."""

    def __init__(self, student: NetworkInfo, teacher_widths: tuple[int, ...],
                 stages: tuple[int, ...], init: tuple[float, ...]) -> None:
        super().__init__()
        n = len(student.widths)
        self.stages = tuple(stages)
        embedders = {}
        for s in self.stages:
            in_chans = student.in_chans if s == 1 else student.widths[s - 2]
            stride = student.strides[0] if s == 1 else student.strides[s - 1] // student.strides[s - 2]
            embedders[f"stage{s}"] = OverlapPatchEmbed(in_chans, teacher_widths[s - 1],
                                                       patch_size=2 * stride - 1, stride=stride)
        self.embed = nn.ModuleDict(embedders)
        self.embed.apply(init_transformer_weights)  # the init of the student's own embedders
        dtype = torch.get_default_dtype()
        self.pea_scale = nn.Parameter(torch.tensor([float(init[s - 1]) for s in self.stages], dtype=dtype))
        self.assistant_scale = nn.Parameter(
            torch.tensor([float(init[s - 1 + n]) for s in self.stages], dtype=dtype))

    def forward(self, stage: int, aligned: torch.Tensor, stage_input: torch.Tensor) -> torch.Tensor:
        index = self.stages.index(stage)
        assistant, _, _ = self.embed[f"stage{stage}"](stage_input)
        return self.pea_scale[index] * aligned + self.assistant_scale[index] * assistant


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------

def _check_number(name: str, value: float, low: float = 0.0) -> None:
    if not math.isfinite(value) or value < low:
        raise ValueError(f"{name} must be a finite number >= {low:g}, got {value!r}")


@dataclass
class FeatureOptions:
    """CSF + HCL settings (paper defaults)."""

    hcl_weight: float = 1.0          # weight of the hierarchical context loss
    csf_mid_channels: int = 64       # mid width M of the fusion path
    csf_reduction: int = 16          # attention hidden width L = max(M // reduction, min)
    csf_min_hidden: int = 32
    #: "fixed" level weights, or "halved" per level used as the reference code does.
    hcl_level_weights: str = "fixed"

    def check_features(self) -> None:
        _check_number("hcl_weight", self.hcl_weight)
        if self.hcl_level_weights not in HCL_LEVEL_WEIGHTS:
            raise ValueError(f"hcl_level_weights must be one of {', '.join(HCL_LEVEL_WEIGHTS)}, "
                             f"got {self.hcl_level_weights!r}")
        for name in ("csf_mid_channels", "csf_reduction", "csf_min_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")


@dataclass
class EmbeddingOptions:
    """PEA settings (paper defaults): weights per stage (index = stage - 1), stages aligned."""

    embed_weights: tuple[float, ...] = (0.1, 0.1, 0.5, 1.0)
    pea_stages: tuple[int, ...] = (1, 2, 3, 4)

    def check_embeddings(self) -> None:
        for w in self.embed_weights:
            _check_number("every embed_weights entry", w)
        if not self.pea_stages:
            raise ValueError("pea_stages must name at least one stage")
        if len(set(self.pea_stages)) != len(self.pea_stages):
            raise ValueError(f"pea_stages names a stage twice: {self.pea_stages}")
        if min(self.pea_stages) < 1:
            raise ValueError(f"pea_stages are counted from 1, got {self.pea_stages}")


@dataclass
class MixerOptions:
    """GL-Mixer settings; α/β start at 0.5 (the reference leaves them uninitialised)."""

    gl_heads: int = 8
    gl_kernel_size: int = 3
    gl_alpha: float = 0.5
    gl_beta: float = 0.5
    gl_residual: bool = False

    def check_mixer(self) -> None:
        if self.gl_heads < 1:
            raise ValueError(f"gl_heads must be a positive integer, got {self.gl_heads}")
        if self.gl_kernel_size < 1 or self.gl_kernel_size % 2 == 0:
            raise ValueError(f"gl_kernel_size must be a positive odd integer, got {self.gl_kernel_size}")
        for name in ("gl_alpha", "gl_beta"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)!r}")


@dataclass
class AssistantOptions:
    """EA settings: initial mixing scalars, PEA's for stages 1..n then EA's for stages 1..n."""

    ea_init: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)

    def check_assistant(self) -> None:
        for w in self.ea_init:
            if not math.isfinite(w):
                raise ValueError(f"every ea_init entry must be a finite number, got {w!r}")


@dataclass
class BaseOptions(EmbeddingOptions, FeatureOptions):
    def validate(self) -> None:
        self.check_features()
        self.check_embeddings()


@dataclass
class GLOptions(MixerOptions, EmbeddingOptions, FeatureOptions):
    def validate(self) -> None:
        self.check_features()
        self.check_embeddings()
        self.check_mixer()


@dataclass
class EAOptions(AssistantOptions, EmbeddingOptions, FeatureOptions):
    def validate(self) -> None:
        self.check_features()
        self.check_embeddings()
        self.check_assistant()


@dataclass
class CSFOnlyOptions(FeatureOptions):
    def validate(self) -> None:
        self.check_features()


@dataclass
class PEAOnlyOptions(EmbeddingOptions):
    def validate(self) -> None:
        self.check_embeddings()


# --------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------


class TransKDMethod(DistillMethod):
    """Shared machinery: CSF/HCL on the stage maps and PEA/MSE on the patch embeddings.

    Subclasses switch the branches on with ``use_features``/``use_embeddings`` and may refine
    the aligned embeddings by overriding :meth:`align_embedding`.
    """

    use_features: ClassVar[bool] = True
    use_embeddings: ClassVar[bool] = True
    uses_teacher_logits = False

    def __init__(self, student: NetworkInfo, teacher: NetworkInfo | None, options) -> None:
        super().__init__(student, teacher, options)
        if teacher is None:
            raise ConfigError(f"method {self.name!r} needs a teacher model")
        if self.use_features:
            # Stages are paired by stride: a student stage meets the teacher stage nearest in
            # stride, resampled to the student's size (one to one for MiT/PVTv2 pairs).
            self.csf = CrossSelectiveFusion(student.widths, self.paired_teacher_widths,
                                            options.csf_mid_channels, options.csf_reduction,
                                            options.csf_min_hidden)
        if self.use_embeddings:
            n = len(student.embedding_widths)
            if len(options.embed_weights) != n:
                raise ConfigError(f"method {self.name!r} option 'embed_weights' needs one weight for "
                                  f"each of the student's {n} embedding stages, got "
                                  f"{len(options.embed_weights)}")
            if max(options.pea_stages) > n:
                raise ConfigError(f"method {self.name!r} option 'pea_stages' {options.pea_stages} "
                                  f"names a stage beyond the student's {n} embedding stages")
            self.pea_stages = tuple(sorted(options.pea_stages))
            self.pea = PatchEmbeddingAlignment(student.embedding_widths,
                                               self.paired_teacher_embed_widths, self.pea_stages)

    @classmethod
    def needs(cls, options) -> tuple[str, ...]:
        return (("features",) if cls.use_features else ()) + (
            ("embeddings",) if cls.use_embeddings else ())

    def align_embedding(self, stage: int, ctx: DistillContext) -> torch.Tensor:
        """The student's stage embedding mapped to the teacher's width (tokens B, N, Ct)."""
        return self.pea(stage, ctx.student.embeddings[stage - 1])

    def loss_terms(self, ctx: DistillContext) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        if self.use_features:
            outputs = self.csf(ctx.student.features)
            targets = [self.teacher_map(ctx, i, out) for i, out in enumerate(outputs)]
            terms["hcl"] = self.options.hcl_weight * hcl_loss(outputs, targets,
                                                               self.options.hcl_level_weights)
        if self.use_embeddings:
            for stage in self.pea_stages:
                aligned = self.align_embedding(stage, ctx)
                target = self.teacher_tokens(ctx, stage - 1)
                if aligned.shape != target.shape:
                    raise ValueError(f"stage {stage} embedding of the student {tuple(aligned.shape)} "
                                     f"does not match the teacher's {tuple(target.shape)}")
                weight = self.options.embed_weights[stage - 1]
                terms[f"embed_{stage}"] = weight * F.mse_loss(full_precision(aligned), full_precision(target))
        return terms


@register_method
class TransKDBase(TransKDMethod):
    """TransKD-Base: CSF + HCL on every stage map, PEA + MSE on the chosen stage embeddings."""

    name = "transkd_base"
    Options = BaseOptions


@register_method
class TransKDGL(TransKDMethod):
    """TransKD-GL: TransKD-Base with the GL-Mixer applied to the last stage's embedding."""

    name = "transkd_gl"
    Options = GLOptions

    def __init__(self, student: NetworkInfo, teacher: NetworkInfo | None, options: GLOptions) -> None:
        super().__init__(student, teacher, options)
        self.mixed_stage = len(student.embedding_widths)
        if self.mixed_stage not in self.pea_stages:
            raise ConfigError(f"method {self.name!r} mixes the stage-{self.mixed_stage} embedding, "
                              f"so 'pea_stages' must include {self.mixed_stage}")
        width = student.embedding_widths[-1]
        if width % options.gl_heads:
            raise ConfigError(f"method {self.name!r} option 'gl_heads' ({options.gl_heads}) must "
                              f"divide the student's last width {width}")
        self.mixer = GlobalLocalMixer(width, options.gl_heads, options.gl_kernel_size,
                                      options.gl_alpha, options.gl_beta, options.gl_residual)

    def align_embedding(self, stage: int, ctx: DistillContext) -> torch.Tensor:
        embedding = ctx.student.embeddings[stage - 1]
        if stage == self.mixed_stage:
            embedding = self.mixer(embedding)
        return self.pea(stage, embedding)


@register_method
class TransKDEA(TransKDMethod):
    """TransKD-EA: TransKD-Base whose aligned embeddings mix in the Embedding Assistant."""

    name = "transkd_ea"
    Options = EAOptions

    def __init__(self, student: NetworkInfo, teacher: NetworkInfo | None, options: EAOptions) -> None:
        super().__init__(student, teacher, options)
        n = len(student.widths)
        if student.embedding_strides != student.strides:
            raise ConfigError(f"method {self.name!r} embeds each student stage's input anew, which "
                              f"needs a student whose every stage opens with a patch embedding "
                              f"(MiT/PVTv2/SegFormer); {student.name or 'this student'} does not")
        if len(options.ea_init) != 2 * n:
            raise ConfigError(f"method {self.name!r} option 'ea_init' needs {2 * n} values (PEA's "
                              f"then EA's weight per stage), got {len(options.ea_init)}")
        self.assistant = EmbeddingAssistant(student, self.paired_teacher_embed_widths,
                                            self.pea_stages, options.ea_init)

    def align_embedding(self, stage: int, ctx: DistillContext) -> torch.Tensor:
        stage_input = ctx.images if stage == 1 else ctx.student.features[stage - 2]
        return self.assistant(stage, super().align_embedding(stage, ctx), stage_input)


@register_method
class CSFOnly(TransKDMethod):
    """Ablation: CSF + HCL on the stage maps, no embedding branch."""

    name = "csf_only"
    Options = CSFOnlyOptions
    use_embeddings = False


@register_method
class PEAOnly(TransKDMethod):
    """Ablation: PEA + MSE on the patch embeddings, no feature-map branch."""

    name = "pea_only"
    Options = PEAOnlyOptions
    use_features = False
