"""Building blocks shared by the hierarchical transformer encoders (MiT, PVTv2).

Names follow the original NVlabs/SegFormer code (``q``, ``kv``, ``sr``, ``fc1``, ``dwconv``) so
weight maps stay short and readable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .linear import Linear


def trunc_normal_(tensor: torch.Tensor, std: float = 0.02, bound: float = 2.0) -> torch.Tensor:
    """Normal(0, std) truncated to ±``bound`` (absolute), the ViT/SegFormer initialisation.

    The reference truncates at ±2 in absolute units, i.e. 100 std for std 0.02, so truncation
    never binds in practice; a clamp keeps it exact without slow rejection sampling.
    """
    with torch.no_grad():
        return tensor.normal_(0.0, std).clamp_(-bound, bound)


def init_transformer_weights(module: nn.Module) -> None:
    """SegFormer/PVTv2 init: trunc-normal linear, unit LayerNorm, fan-out normal convs."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
        fan_out //= module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def tokens_to_grid(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, N, C) tokens → (B, C, H, W) map without a copy.

    Row-major tokens are the NHWC layout, so the map is a channels-last view; convolutions take it
    as is and answer channels-last, which :func:`grid_to_tokens` turns back into tokens for free.
    """
    return x.reshape(x.shape[0], height, width, x.shape[2]).permute(0, 3, 1, 2)


def grid_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) map → (B, N, C) tokens; a view when the map is channels-last."""
    return x.permute(0, 2, 3, 1).flatten(1, 2)


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample while training."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class OverlapPatchEmbed(nn.Module):
    """Strided convolution with overlapping windows, flattened to LayerNorm-ed tokens."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, stride: int,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=stride,
                              padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim, eps=eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        height, width = x.shape[2:]
        return self.norm(grid_to_tokens(x)), height, width


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys/values come from a spatially reduced sequence.

    Runs through ``scaled_dot_product_attention`` so fused kernels are used where available.
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, sr_eps: float = 1e-5) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.q = Linear(dim, dim, bias=qkv_bias)
        self.kv = Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=sr_eps)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q = self.q(x).reshape(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)
        if self.sr_ratio > 1:
            x = self.norm(grid_to_tokens(self.sr(tokens_to_grid(x, height, width))))
        kv = self.kv(x).reshape(batch, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            q, kv[0], kv[1], dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale)
        out = out.transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj_drop(self.proj(out))


class DWConv(nn.Module):
    """Depth-wise 3×3 convolution applied to a token sequence laid out on its grid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return grid_to_tokens(self.dwconv(tokens_to_grid(x, height, width)))


class MixFFN(nn.Module):
    """Linear → depth-wise conv → GELU → Linear: the conv supplies positional information."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden_dim)
        self.dwconv = DWConv(hidden_dim)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x), height, width)))
        return self.drop(self.fc2(x))


class TransformerBlock(nn.Module):
    """Pre-norm block: efficient attention then Mix-FFN, each with a residual and DropPath."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int,
                 drop_path: float = 0.0, qkv_bias: bool = True, drop: float = 0.0,
                 attn_drop: float = 0.0, eps: float = 1e-6, sr_eps: float = 1e-5) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio, qkv_bias=qkv_bias,
                                           attn_drop=attn_drop, proj_drop=drop, sr_eps=sr_eps)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), height, width))
        return x + self.drop_path(self.mlp(self.norm2(x), height, width))
