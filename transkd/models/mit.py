"""Mix Transformer (MiT) encoders B0–B5 of SegFormer (Xie et al., NeurIPS 2021).

The same hierarchical encoder also serves PVTv2 (see ``pvtv2.py``), which differs only in its
MLP ratios; the configuration lives in :class:`EncoderConfig`.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from ..errors import UnknownOptionError
from .layers import OverlapPatchEmbed, TransformerBlock, init_transformer_weights, tokens_to_grid
from .registry import register_model


@dataclass(frozen=True)
class EncoderConfig:
    """Widths, depths and ratios of a four-stage hierarchical transformer encoder."""

    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratios: tuple[float, float, float, float] = (4, 4, 4, 4)
    in_chans: int = 3
    drop_path_rate: float = 0.1
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    qkv_bias: bool = True
    block_eps: float = 1e-6
    patch_embed_eps: float = 1e-5
    sr_eps: float = 1e-5


@dataclass
class EncoderOutput:
    """Stage maps (after the stage LayerNorm) and, if asked, the patch-embedding tokens."""

    features: list[torch.Tensor]
    embeddings: list[torch.Tensor] | None = None


class EncoderStage(nn.Module):
    """Patch embedding, a stack of transformer blocks and the closing LayerNorm."""

    def __init__(self, in_chans: int, dim: int, patch_size: int, stride: int,
                 block_kwargs: list[dict], block_eps: float, patch_embed_eps: float) -> None:
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(in_chans, dim, patch_size, stride, eps=patch_embed_eps)
        self.blocks = nn.ModuleList(TransformerBlock(dim, **kw) for kw in block_kwargs)
        self.norm = nn.LayerNorm(dim, eps=block_eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the stage map (B, C, H, W) and the patch-embedding tokens (B, N, C)."""
        tokens, height, width = self.patch_embed(x)
        embedding = tokens
        for block in self.blocks:
            tokens = block(tokens, height, width)
        tokens = self.norm(tokens)
        grid = tokens_to_grid(tokens, height, width)
        return grid, embedding


class StagedEncoder(nn.Module):
    """An encoder of stages, each a stride-2 (the first stride-4) patch embedding then blocks that
    return the stage's grid and its embedding tokens: what the network contract reads. Subclasses
    set ``config.embed_dims`` and ``stages``."""

    config: EncoderConfig
    stages: nn.ModuleList

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.config.embed_dims)

    @property
    def strides(self) -> tuple[int, ...]:
        """4 for the first stage (a stride-4 patch embedding), then twice the previous."""
        return tuple(4 * 2 ** i for i in range(len(self.config.embed_dims)))

    def forward(self, x: torch.Tensor, return_embeddings: bool = False) -> EncoderOutput:
        features, embeddings = [], []
        for stage in self.stages:
            x, embedding = stage(x)
            features.append(x)
            if return_embeddings:
                embeddings.append(embedding)
        return EncoderOutput(features, embeddings if return_embeddings else None)


class HierarchicalEncoder(StagedEncoder):
    """Four-stage transformer encoder with strides 4, 8, 16, 32 (MiT / PVTv2)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        total_blocks = sum(config.depths)
        rates = torch.linspace(0, config.drop_path_rate, total_blocks).tolist() if total_blocks else []
        stages, in_chans, start = [], config.in_chans, 0
        for i, (dim, depth) in enumerate(zip(config.embed_dims, config.depths)):
            block_kwargs = [
                dict(num_heads=config.num_heads[i], mlp_ratio=config.mlp_ratios[i],
                     sr_ratio=config.sr_ratios[i], drop_path=rates[start + j],
                     qkv_bias=config.qkv_bias, drop=config.drop_rate,
                     attn_drop=config.attn_drop_rate, eps=config.block_eps, sr_eps=config.sr_eps)
                for j in range(depth)
            ]
            patch, stride = (7, 4) if i == 0 else (3, 2)
            stages.append(EncoderStage(in_chans, dim, patch, stride, block_kwargs,
                                       config.block_eps, config.patch_embed_eps))
            in_chans, start = dim, start + depth
        self.stages = nn.ModuleList(stages)
        self.apply(init_transformer_weights)



_MIT_WIDE = (64, 128, 320, 512)
MIT_CONFIGS: dict[str, EncoderConfig] = {
    "mit_b0": EncoderConfig(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2)),
    "mit_b1": EncoderConfig(embed_dims=_MIT_WIDE, depths=(2, 2, 2, 2)),
    "mit_b2": EncoderConfig(embed_dims=_MIT_WIDE, depths=(3, 4, 6, 3)),
    "mit_b3": EncoderConfig(embed_dims=_MIT_WIDE, depths=(3, 4, 18, 3)),
    "mit_b4": EncoderConfig(embed_dims=_MIT_WIDE, depths=(3, 8, 27, 3)),
    "mit_b5": EncoderConfig(embed_dims=_MIT_WIDE, depths=(3, 6, 40, 3)),
}


def _register_encoders() -> None:
    for name, cfg in MIT_CONFIGS.items():
        def build(cfg: EncoderConfig = cfg, **overrides) -> HierarchicalEncoder:
            return HierarchicalEncoder(_with_overrides(cfg, overrides))
        register_model(name, build, family="mit", kind="encoder",
                       description=f"Mix Transformer {name[-2:].upper()} encoder")


#: Encoder options a builder passes on (``model.options``); the rest of the config is the size's own.
ENCODER_OPTIONS = ("attn_drop_rate", "drop_path_rate", "drop_rate", "in_chans")


_Config = TypeVar("_Config")


def _with_overrides(cfg: _Config, overrides: dict, builder_options: tuple[str, ...] = ()) -> _Config:
    """``cfg`` (an encoder's config dataclass: MiT/PVTv2's or LVT's) with encoder ``overrides``;
    an unknown name is refused with the closest known one (``builder_options``: what the calling
    builder itself takes, e.g. a head's ``dropout``)."""
    unknown = sorted(set(overrides) - set(ENCODER_OPTIONS))
    if unknown:
        known = tuple(sorted({*ENCODER_OPTIONS, *builder_options}))
        close = difflib.get_close_matches(unknown[0], known, n=1)
        raise UnknownOptionError(unknown[0], close[0] if close else None, known)
    return dataclasses.replace(cfg, **overrides)


_register_encoders()
