"""Lite Vision Transformer (Yang et al., CVPR 2022), the TransKD paper's third student.

Four stages with MiT's overlapping patch embeddings (7×7/4, then 3×3/2). Stage 1 uses
Convolutional Self-Attention (CSA): every 3×3 neighbourhood of a stride-2 grid attends over its
own nine pixels with weights predicted from the pooled centre, and the result is folded back.
Stages 2–4 use Recursive Atrous Self-Attention (RASA): queries pass through a shared depth-wise
3×3 convolution at dilations 1, 3, 5 (SiLU each, summed), keys/values are spatially reduced as in
PVT, and the attention is applied twice, the second time to its own output plus the input.
Stage 1's MLP is plain; the others are Mix-FFNs. Stage maps carry no closing LayerNorm.

Unfold and fold are written as grouped (transposed) convolutions with one-hot kernels, which
compute the same sums and export to ONNX at every opset this package uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import (
    DropPath,
    EfficientSelfAttention,
    MixFFN,
    OverlapPatchEmbed,
    grid_to_tokens,
    init_transformer_weights,
    tokens_to_grid,
)
from .linear import Linear
from .mit import StagedEncoder, _with_overrides
from .registry import register_model


@dataclass(frozen=True)
class LVTConfig:
    """Widths, depths and attention settings of an LVT encoder.

    ``sr_ratios``: key/value reduction of the RASA stages (the CSA stage has none, so 1);
    ``attention``: ``"csa"`` or ``"rasa"`` per stage; ``atrous_rates``/``recursions``: RASA's
    query dilations and how many times attention is applied.
    """

    embed_dims: tuple[int, int, int, int] = (64, 64, 160, 256)
    depths: tuple[int, int, int, int] = (2, 2, 2, 2)
    num_heads: tuple[int, int, int, int] = (2, 2, 5, 8)
    mlp_ratios: tuple[float, float, float, float] = (4, 8, 4, 4)
    sr_ratios: tuple[int, int, int, int] = (1, 4, 2, 1)
    attention: tuple[str, str, str, str] = ("csa", "rasa", "rasa", "rasa")
    atrous_rates: tuple[int, ...] = (1, 3, 5)
    recursions: int = 2
    in_chans: int = 3
    # The TransKD authors train the LVT student without stochastic depth or dropout.
    drop_path_rate: float = 0.0
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0


def _one_hot_kernel(channels: int, like: torch.Tensor) -> torch.Tensor:
    """(channels·9, 1, 3, 3) kernel whose filter c·9+k picks offset k of channel c."""
    eye = torch.eye(9, dtype=like.dtype, device=like.device).reshape(9, 1, 3, 3)
    return eye.repeat(channels, 1, 1, 1)


class ConvSelfAttention(nn.Module):
    """CSA: per 3×3 window of a stride-2 grid, a 9×9 attention over the window's pixels.

    ``attention`` predicts each window's 9×9 weights per head from the 2×2-average-pooled input;
    ``value`` is one C×C map per window offset (a 9-group 1×1 conv over the unfolded window).
    """

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.attention = Linear(dim, 81 * num_heads)
        self.value = nn.Conv2d(9 * dim, 9 * dim, 1, groups=9, bias=False)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, _, dim = x.shape
        grid = tokens_to_grid(x, height, width)
        pooled = F.avg_pool2d(grid, 2, 2, ceil_mode=True)
        h, w = pooled.shape[2:]
        heads, head_dim = self.num_heads, dim // self.num_heads
        attn = self.attention(grid_to_tokens(pooled)).reshape(batch, h * w, heads, 9, 9)
        attn = self.attn_drop((attn.transpose(1, 2) * self.scale).softmax(dim=-1))

        kernel = _one_hot_kernel(dim, x)
        windows = F.conv2d(grid, kernel, stride=2, padding=1, groups=dim)  # unfold: (B, C·9, h, w)
        windows = windows.reshape(batch, dim, 9, h * w).permute(0, 3, 2, 1)  # (B, n, 9, C)
        # Through the module, one 1×1 "pixel" per window, so layer-hooking MAC counters see it.
        values = self.value(windows.reshape(batch * h * w, 9 * dim, 1, 1))
        values = values.reshape(batch, h * w, 9, heads, head_dim).permute(0, 3, 1, 2, 4)

        out = (attn @ values).permute(0, 1, 4, 3, 2).reshape(batch, dim * 9, h, w)
        folded = F.conv_transpose2d(out, kernel, stride=2, groups=dim)  # fold, before cropping
        folded = folded[:, :, 1:1 + height, 1:1 + width]
        return self.proj_drop(self.proj(grid_to_tokens(folded)))


class AtrousDepthwise(nn.Module):
    """One depth-wise 3×3 kernel applied at several dilations, SiLU on each, summed."""

    def __init__(self, dim: int, rates: tuple[int, ...]) -> None:
        super().__init__()
        self.rates = tuple(rates)
        self.weight = nn.Parameter(torch.empty(dim, 1, 3, 3))
        nn.init.kaiming_uniform_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = x.shape[1]
        return sum(F.silu(F.conv2d(x, self.weight, padding=r, dilation=r, groups=groups))
                   for r in self.rates)


class RecursiveAtrousSelfAttention(EfficientSelfAttention):
    """RASA: spatially reduced attention with atrous queries, applied ``recursions`` times."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, rates: tuple[int, ...],
                 recursions: int, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__(dim, num_heads, sr_ratio, qkv_bias=False, attn_drop=attn_drop,
                         proj_drop=proj_drop)
        self.ds = AtrousDepthwise(dim, rates)
        self.recursions = recursions

    def _attend(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q = grid_to_tokens(self.ds(tokens_to_grid(self.q(x), height, width)))
        q = q.reshape(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)
        if self.sr_ratio > 1:
            x = self.norm(grid_to_tokens(self.sr(tokens_to_grid(x, height, width))))
        kv = self.kv(x).reshape(batch, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            q, kv[0], kv[1], dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, tokens, dim)))

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if self.recursions == 1:
            return self._attend(x, height, width)
        # Each pass attends over the previous pass's output plus that pass's own input.
        inputs, out = x, F.silu(self._attend(x, height, width))
        for _ in range(self.recursions - 1):
            inputs = out + inputs
            out = F.silu(self._attend(inputs, height, width))
        return out


class PlainMLP(nn.Module):
    """Linear → GELU → Linear (LVT's first stage has no depth-wise convolution)."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class LVTBlock(nn.Module):
    """Pre-norm block: CSA or RASA, then the stage's MLP, each with a residual and DropPath."""

    def __init__(self, dim: int, stage: int, config: LVTConfig, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        if config.attention[stage] == "csa":
            self.attn = ConvSelfAttention(dim, config.num_heads[stage], config.attn_drop_rate)
        else:
            self.attn = RecursiveAtrousSelfAttention(
                dim, config.num_heads[stage], config.sr_ratios[stage], config.atrous_rates,
                config.recursions, config.attn_drop_rate)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * config.mlp_ratios[stage])
        mlp = PlainMLP if config.attention[stage] == "csa" else MixFFN
        self.mlp = mlp(dim, hidden, drop=config.drop_rate)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), height, width))
        return x + self.drop_path(self.mlp(self.norm2(x), height, width))


class LVTStage(nn.Module):
    """Patch embedding and blocks; the stage map is the last block's output (no closing norm)."""

    def __init__(self, in_chans: int, dim: int, stage: int, config: LVTConfig,
                 rates: list[float]) -> None:
        super().__init__()
        patch, stride = (7, 4) if stage == 0 else (3, 2)
        self.patch_embed = OverlapPatchEmbed(in_chans, dim, patch, stride)
        self.blocks = nn.ModuleList(LVTBlock(dim, stage, config, r) for r in rates)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, height, width = self.patch_embed(x)
        embedding = tokens
        for block in self.blocks:
            tokens = block(tokens, height, width)
        return tokens_to_grid(tokens, height, width), embedding


class LVTEncoder(StagedEncoder):
    """Four-stage LVT encoder with strides 4, 8, 16, 32; the same interface as MiT's."""

    def __init__(self, config: LVTConfig) -> None:
        super().__init__()
        self.config = config
        total = sum(config.depths)
        rates = [config.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages, in_chans, start = [], config.in_chans, 0
        for i, (dim, depth) in enumerate(zip(config.embed_dims, config.depths)):
            stages.append(LVTStage(in_chans, dim, i, config, rates[start:start + depth]))
            in_chans, start = dim, start + depth
        self.stages = nn.ModuleList(stages)
        self.apply(init_transformer_weights)
        for module in self.modules():
            if isinstance(module, ConvSelfAttention):
                # fan-out over all nine offsets, as LVT initialises it (not per group)
                nn.init.normal_(module.value.weight, 0.0, math.sqrt(2.0 / module.value.out_channels))



LVT_CONFIGS: dict[str, LVTConfig] = {"lvt": LVTConfig()}


def build_lvt_encoder(name: str, overrides: dict, builder_options: tuple[str, ...] = ()) -> LVTEncoder:
    """The named LVT encoder with the encoder options a builder passes on."""
    return LVTEncoder(_with_overrides(LVT_CONFIGS[name], overrides, builder_options))


def _register() -> None:
    for name in LVT_CONFIGS:
        def build(name: str = name, **overrides) -> LVTEncoder:
            return build_lvt_encoder(name, overrides)
        register_model(name, build, family="lvt", kind="encoder",
                       description="Lite Vision Transformer encoder (CSA + RASA, 64/64/160/256)")


_register()
