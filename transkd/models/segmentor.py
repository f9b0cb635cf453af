"""Encoder + decode head, and the output object that distillation reads from."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .heads import SegFormerHead, SemanticFPNHead
from .lvt import LVTEncoder, build_lvt_encoder
from .mit import MIT_CONFIGS, HierarchicalEncoder, _with_overrides
from .pvtv2 import PVTV2_CONFIGS
from .registry import register_model

#: ImageNet statistics, the normalisation the MiT/PVTv2 weights were pre-trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class SegmentationOutput:
    """The network contract: logits plus what distillation may read from a network.

    ``logits``: (B, K, h, w) at the network's own output stride (None when only the encoder ran).
    ``features``: stage maps (B, C_i, H_i, W_i), shallow to deep; their strides follow from the
    input size, so every network (MiT, a CNN, a ViT at one stride) fits the same contract.
    ``embeddings``: patch-embedding tokens (B, N_i, C_i) after their norm, before the stage's
    blocks, or empty for a network without a patch-embedding stage (a CNN).
    ``grids``: the (height, width) of each embedding's token grid; empty means "the grid of the
    stage map of the same index" (MiT/PVTv2, where each stage opens with its embedding).
    """

    logits: torch.Tensor | None
    features: list[torch.Tensor]
    embeddings: list[torch.Tensor]
    grids: list[tuple[int, int]] = field(default_factory=list)

    def embedding_grid(self, index: int) -> tuple[int, int]:
        """Token grid of embedding ``index``."""
        if self.grids:
            return tuple(self.grids[index])
        return tuple(self.features[index].shape[-2:])


def normalisation_of(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) a network expects of images in [0, 1]: declared by every transkd, ``hf:``
    and ``timm:`` segmentor (``input_mean``/``input_std``); ImageNet's for a module of another
    origin that declares none, the statistics nearly every pre-trained backbone was trained with.

    A network whose weights were trained with its normalisation (an ``hf:`` model loaded from its
    folder or hub id, a ``timm:`` backbone with ``pretrained=True``) sets ``owns_normalisation``: a
    training run then feeds it that normalisation instead of the protocol's. A network that
    starts from random weights adopts the protocol's."""
    return (tuple(getattr(model, "input_mean", None) or IMAGENET_MEAN),
            tuple(getattr(model, "input_std", None) or IMAGENET_STD))


class Segmentor(nn.Module):
    """A hierarchical encoder (MiT, PVTv2 or LVT) with a decode head; ``model(x)`` returns
    logits (B, K, H/4, W/4).

    ``input_mean``/``input_std`` state the normalisation the network expects of images in
    [0, 1] (ImageNet's by default; a training run sets its protocol's, which is saved with it).
    """

    input_mean: tuple[float, ...] = IMAGENET_MEAN
    input_std: tuple[float, ...] = IMAGENET_STD

    def __init__(self, encoder: HierarchicalEncoder | LVTEncoder, decode_head: nn.Module, *, name: str,
                 num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.decode_head = decode_head
        self.model_name = name
        self.num_classes = num_classes

    @property
    def widths(self) -> tuple[int, ...]:
        """Channel widths of the four encoder stages."""
        return self.encoder.widths

    def forward(self, x: torch.Tensor, return_features: bool = False):
        check_input(x, self.encoder.config.in_chans)
        enc = self.encoder(x, return_embeddings=return_features)
        logits = self.decode_head(enc.features)
        if not return_features:
            return logits
        return SegmentationOutput(logits, enc.features, enc.embeddings)

    def encode(self, x: torch.Tensor) -> SegmentationOutput:
        """Stage maps and embeddings without the decode head (a teacher whose logits no method
        reads skips it: for SegFormer-B2 the costliest part of its forward)."""
        check_input(x, self.encoder.config.in_chans)
        enc = self.encoder(x, return_embeddings=True)
        return SegmentationOutput(None, enc.features, enc.embeddings)


def check_input(x: torch.Tensor, channels: int = 3) -> None:
    """Fail with one sentence on inputs the encoder cannot take."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"input must be 4-D (batch, {channels}, height, width), got shape "
                         f"{tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"input must have {channels} channels, got {x.shape[1]} "
                         f"(shape {tuple(x.shape)})")


def _segformer_builder(name: str, encoder_name: str, decoder_dim: int):
    def build(num_classes: int, decoder_dim: int = decoder_dim, dropout: float = 0.1,
              **encoder_overrides) -> Segmentor:
        encoder = HierarchicalEncoder(_with_overrides(MIT_CONFIGS[encoder_name], encoder_overrides,
                                                      ("decoder_dim", "dropout")))
        head = SegFormerHead(encoder.widths, num_classes, embed_dim=decoder_dim, dropout=dropout)
        return Segmentor(encoder, head, name=name, num_classes=num_classes)
    return build


def _fpn_builder(name: str, encoder_name: str, norm: bool = True):
    def build(num_classes: int, dropout: float = 0.1, **encoder_overrides) -> Segmentor:
        encoder = HierarchicalEncoder(_with_overrides(PVTV2_CONFIGS[encoder_name], encoder_overrides,
                                                      ("dropout",)))
        head = SemanticFPNHead(encoder.widths, num_classes, dropout=dropout, norm=norm)
        return Segmentor(encoder, head, name=name, num_classes=num_classes)
    return build


def _lvt_builder(name: str, encoder_name: str):
    # The authors' LVT student: All-MLP head with D=256 and, as they train it, no dropout.
    def build(num_classes: int, decoder_dim: int = 256, dropout: float = 0.0,
              **encoder_overrides) -> Segmentor:
        encoder = build_lvt_encoder(encoder_name, encoder_overrides, ("decoder_dim", "dropout"))
        head = SegFormerHead(encoder.widths, num_classes, embed_dim=decoder_dim, dropout=dropout)
        return Segmentor(encoder, head, name=name, num_classes=num_classes)
    return build


for _size in range(6):
    _dim = 256 if _size < 2 else 768
    register_model(f"segformer_b{_size}", _segformer_builder(f"segformer_b{_size}", f"mit_b{_size}", _dim),
                   family="segformer", kind="segmentor",
                   description=f"SegFormer: MiT-B{_size} + All-MLP head (D={_dim})")
    register_model(f"pvtv2_b{_size}_fpn", _fpn_builder(f"pvtv2_b{_size}_fpn", f"pvtv2_b{_size}"),
                   family="pvtv2", kind="segmentor",
                   description=f"PVTv2-B{_size} + Semantic FPN head (256/128)")
    register_model(f"pvtv2_b{_size}_authors_fpn",
                   _fpn_builder(f"pvtv2_b{_size}_authors_fpn", f"pvtv2_b{_size}", norm=False),
                   family="pvtv2", kind="segmentor",
                   description=f"PVTv2-B{_size} + the TransKD authors' Semantic FPN head "
                               "(convolutions with bias, no norm)")

register_model("lvt_mlp", _lvt_builder("lvt_mlp", "lvt"), family="lvt", kind="segmentor",
               description="LVT + All-MLP head (D=256), the TransKD authors' LVT student")
