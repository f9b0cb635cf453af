"""timm backbones with a transkd decode head (``timm:<name>``): any timm model that exposes
``features_only`` stage maps becomes a segmentor.

The backbone is built by timm with ``features_only=True`` (weights from timm only when
``pretrained=True`` is asked for); transkd's SegFormer All-MLP head (``head="segformer"``, the
default) or Semantic FPN head (``head="fpn"``) decodes the selected stages. Patch embeddings
are read, only when asked for, from the backbone's token patch-embedding modules (``patch_embed``
and the per-stage embedders/patch-merging layers of PVTv2 and Swin); a CNN has none.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .heads import SegFormerHead, SemanticFPNHead
from .segmentor import IMAGENET_MEAN, IMAGENET_STD, SegmentationOutput, check_input
from .tokens import grid_of

HEADS = ("segformer", "fpn")
#: Classes of timm modules that turn pixels or a coarser token grid into tokens.
EMBEDDER_CLASSES = ("PatchEmbed", "OverlapPatchEmbed", "PatchMerging")


def _timm():
    # Deferred: timm is an optional extra and imports torchvision, which must match torch.
    try:
        import timm
    except ImportError as exc:
        raise ConfigError(f"timm: models need timm and a torchvision built for the installed torch "
                          f"({exc}); pip install 'transkd[timm]'") from None
    return timm


class TimmSegmentor(nn.Module):
    """A timm ``features_only`` backbone plus a transkd decode head."""

    def __init__(self, backbone_name: str, num_classes: int, *, head: str = "segformer",
                 out_indices: tuple[int, ...] | None = None, decoder_dim: int = 256,
                 dropout: float = 0.1, pretrained: bool = False, in_chans: int = 3,
                 **timm_kwargs: Any) -> None:
        super().__init__()
        if head not in HEADS:
            raise ConfigError(f"timm:{backbone_name} option 'head' must be one of {', '.join(HEADS)}, "
                              f"got {head!r}")
        timm = _timm()
        if out_indices is None:  # the last four stages: strides 4..32 for most backbones
            probe = timm.create_model(backbone_name, pretrained=False, features_only=True,
                                      in_chans=in_chans, **timm_kwargs)
            out_indices = tuple(range(len(probe.feature_info)))[-4:]
            del probe
        try:
            self.backbone = timm.create_model(backbone_name, pretrained=pretrained, features_only=True,
                                              out_indices=tuple(out_indices), in_chans=in_chans,
                                              **timm_kwargs)
        except RuntimeError as exc:
            raise ConfigError(f"timm:{backbone_name} cannot serve as a segmentation backbone: "
                              f"{exc}") from None
        widths = tuple(self.backbone.feature_info.channels())
        strides = tuple(self.backbone.feature_info.reduction())
        self.decode_head = (SegFormerHead(widths, num_classes, embed_dim=decoder_dim, dropout=dropout)
                            if head == "segformer" else
                            SemanticFPNHead(widths, num_classes, dropout=dropout, strides=strides))
        self.model_name = f"timm:{backbone_name}"
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.channels_last_maps = str(getattr(self.backbone, "output_fmt", "NCHW")).endswith("NHWC")
        cfg = getattr(self.backbone, "pretrained_cfg", None) or {}
        self.input_mean = tuple(cfg.get("mean", IMAGENET_MEAN))
        self.input_std = tuple(cfg.get("std", IMAGENET_STD))
        self.owns_normalisation = bool(pretrained)  # pretrained weights expect pretrained_cfg's
        self.model_options = {"head": head, "out_indices": list(out_indices), "decoder_dim": decoder_dim,
                              "dropout": dropout, "in_chans": in_chans, **timm_kwargs}
        # Token embedders only in a network that opens with a patch embedding (a transformer):
        # a CNN's "downsample" layers are convolutions, not patch embeddings.
        names = [n for n, m in self.backbone.named_modules()
                 if type(m).__name__ in EMBEDDER_CLASSES
                 and n.rsplit(".", 1)[-1] in ("patch_embed", "downsample")]
        opens_with_tokens = any(n.rsplit(".", 1)[-1] == "patch_embed" for n in names)
        self._embedders = [self.backbone.get_submodule(n) for n in names] if opens_with_tokens else []

    def _maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = self.backbone(x)
        return [m.permute(0, 3, 1, 2) for m in maps] if self.channels_last_maps else list(maps)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        check_input(x, self.in_chans)
        if not return_features:
            return self.decode_head(self._maps(x))
        tokens: list[tuple[torch.Tensor, tuple[int, int]]] = []
        handles = [m.register_forward_hook(
            lambda module, args, output: tokens.append(timm_tokens(module, output, x.shape[-2:])))
            for m in self._embedders]
        try:
            maps = self._maps(x)
        finally:
            for handle in handles:
                handle.remove()
        return SegmentationOutput(self.decode_head(maps), maps, [t for t, _ in tokens],
                                  [g for _, g in tokens])


def timm_tokens(module: nn.Module, output: torch.Tensor,
                image_size: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """(tokens (B, N, C), grid) of a timm embedder's output: tokens already, NCHW (a ``PatchEmbed``
    whose ``output_fmt`` says so) or NHWC (timm's default for PVTv2 and Swin embedders)."""

    if output.ndim == 3:
        grid = grid_of(output.shape[1], *image_size)
        if grid is None:
            raise ValueError(f"cannot tell the token grid of {tuple(output.shape)} embeddings")
        return output, grid
    if str(getattr(module, "output_fmt", "NHWC")).endswith("NCHW"):
        output = output.permute(0, 2, 3, 1)
    return output.flatten(1, 2), (int(output.shape[1]), int(output.shape[2]))


def build_timm(name: str, num_classes: int, **options: Any) -> TimmSegmentor:
    """``timm:<name>`` with ``num_classes`` outputs; options as :class:`TimmSegmentor`'s."""
    return TimmSegmentor(name, num_classes, **options)
