"""PVTv2 encoders B0–B5 (Wang et al., CVMJ 2022): MiT's structure with MLP ratios 8, 8, 4, 4."""

from __future__ import annotations

from .mit import EncoderConfig, HierarchicalEncoder, _with_overrides
from .registry import register_model

_WIDE = (64, 128, 320, 512)
_RATIOS = (8, 8, 4, 4)
PVTV2_CONFIGS: dict[str, EncoderConfig] = {
    "pvtv2_b0": EncoderConfig(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2), mlp_ratios=_RATIOS),
    "pvtv2_b1": EncoderConfig(embed_dims=_WIDE, depths=(2, 2, 2, 2), mlp_ratios=_RATIOS),
    "pvtv2_b2": EncoderConfig(embed_dims=_WIDE, depths=(3, 4, 6, 3), mlp_ratios=_RATIOS),
    "pvtv2_b3": EncoderConfig(embed_dims=_WIDE, depths=(3, 4, 18, 3), mlp_ratios=_RATIOS),
    "pvtv2_b4": EncoderConfig(embed_dims=_WIDE, depths=(3, 8, 27, 3), mlp_ratios=_RATIOS),
    "pvtv2_b5": EncoderConfig(embed_dims=_WIDE, depths=(3, 6, 40, 3), mlp_ratios=(4, 4, 4, 4)),
}

for _name, _cfg in PVTV2_CONFIGS.items():
    def _build(cfg: EncoderConfig = _cfg, **overrides) -> HierarchicalEncoder:
        return HierarchicalEncoder(_with_overrides(cfg, overrides))
    register_model(_name, _build, family="pvtv2", kind="encoder",
                   description=f"PVTv2-{_name[-2:].upper()} encoder")
