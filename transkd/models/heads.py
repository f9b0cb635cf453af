"""Decode heads: SegFormer's All-MLP head and the Semantic FPN (neck + head) used with PVTv2."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .conv import Conv2d, conv2d
from .linear import Linear


class ConvBNReLU(nn.Sequential):
    """Bias-free convolution, BatchNorm, ReLU (mmcv's ConvModule with BN); with ``norm=False``
    a convolution with bias and ReLU (ConvModule without a norm, as the TransKD authors' PVTv2
    Semantic FPN head is built)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, norm: bool = True) -> None:
        super().__init__()
        self.conv = Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=not norm)
        if norm:
            self.bn = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        if not norm:
            nn.init.zeros_(self.conv.bias)


class MLPProjection(nn.Module):
    """Token-wise linear projection of a stage map, kept on its grid."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        x = self.proj(x.flatten(2).transpose(1, 2))
        return x.transpose(1, 2).reshape(batch, -1, height, width)


class SegFormerHead(nn.Module):
    """All-MLP decoder: project each stage to D, upsample to 1/4, fuse, classify.

    The 1×1 fuse convolution over the concatenated upsampled projections is linear, and so are the
    projections and bilinear upsampling (whose weights sum to one, so biases pass unchanged). The
    head therefore composes each stage's projection with its slice of the fuse weights and applies
    it at the stage's own resolution before upsampling: the same function (equal up to float
    rounding) at a fraction of the cost — for SegFormer-B0 at 512×1024 the head drops from about
    9.5 to 0.6 GMACs. ``fused_projection = False`` runs the literal reference computation, which the
    size counter uses so reported MACs follow the architecture as published.
    """

    def __init__(self, in_channels: tuple[int, ...], num_classes: int, embed_dim: int = 256,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.linear_c = nn.ModuleList(MLPProjection(c, embed_dim) for c in in_channels)
        self.fuse = ConvBNReLU(embed_dim * len(in_channels), embed_dim, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = Conv2d(embed_dim, num_classes, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)
        self.fused_projection = True

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        bn = self.fuse.bn
        if self.fused_projection and not bn.training and bn.running_var is not None:
            # Inference: BatchNorm is a per-channel affine map, folded into the projections too.
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            fused = self._fused_projection(features, scale, bn.bias - bn.running_mean * scale)
            fused = self.fuse.relu(fused)
        elif self.fused_projection:
            fused = self.fuse.relu(bn(self._fused_projection(features)))
        else:
            fused = self.fuse(self._reference_concat(features))
        return self.classifier(self.dropout(fused))

    def _reference_concat(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[2:]
        projected = [
            F.interpolate(proj(f), size=size, mode="bilinear", align_corners=False)
            if f.shape[2:] != size else proj(f)
            for proj, f in zip(self.linear_c, features)
        ]
        return torch.cat(projected[::-1], dim=1)

    def _fused_projection(self, features: list[torch.Tensor], scale: torch.Tensor | None = None,
                          shift: torch.Tensor | None = None) -> torch.Tensor:
        """Σ_i upsample(W_i · P_i(f_i)), equal to fuse.conv(concat_i upsample(P_i(f_i))); with
        ``scale``/``shift``, scale · (that) + shift, folded into the weights and the first bias
        (upsampling keeps a constant map constant, so the shift may enter any stage)."""
        size = features[0].shape[2:]
        count = len(features)
        # Concatenation order is [stage 4, ..., stage 1]: stage i owns block count-1-i.
        blocks = self.fuse.conv.weight.flatten(1).split(self.embed_dim, dim=1)
        out = None
        for i in reversed(range(count)):
            proj = self.linear_c[i].proj
            block = blocks[count - 1 - i]
            if scale is not None:
                block = scale[:, None] * block
            bias = block @ proj.bias
            if shift is not None and i == count - 1:
                bias = bias + shift
            weight = (block @ proj.weight)[:, :, None, None]
            y = conv2d(features[i], weight, bias)
            if y.shape[2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            out = y if out is None else out.add_(y)  # y and out are fresh: no autograd hazard
        return out


class FPNNeck(nn.Module):
    """Feature pyramid: 1×1 laterals, nearest top-down additions, 3×3 output convs."""

    def __init__(self, in_channels: tuple[int, ...], out_channels: int = 256) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList(Conv2d(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(
            Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        for conv in [*self.lateral_convs, *self.fpn_convs]:
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[2:], mode="nearest")
        return [conv(x) for conv, x in zip(self.fpn_convs, laterals)]


class FPNHead(nn.Module):
    """Semantic FPN head (Kirillov et al. 2019): per-level conv towers summed at 1/4 scale.

    ``norm``: BatchNorm in the towers (mmseg's configuration); False builds the TransKD authors'
    PVTv2 head, whose tower convolutions carry a bias and no norm.
    """

    def __init__(self, num_levels: int, num_classes: int, in_channels: int = 256,
                 channels: int = 128, strides: tuple[int, ...] = (4, 8, 16, 32),
                 dropout: float = 0.1, norm: bool = True) -> None:
        super().__init__()
        heads = []
        for i in range(num_levels):
            length = max(1, int(math.log2(strides[i] / strides[0])))
            heads.append(nn.ModuleList(
                ConvBNReLU(in_channels if k == 0 else channels, channels, 3, norm)
                for k in range(length)))
        self.scale_heads = nn.ModuleList(heads)
        self.upsample_levels = [strides[i] != strides[0] for i in range(num_levels)]
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[2:]
        out = None
        for level, (tower, x) in enumerate(zip(self.scale_heads, features)):
            for conv in tower:
                x = conv(x)
                if self.upsample_levels[level]:
                    x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            if level > 0:  # unconditionally, as mmseg does: a shape test would freeze into ONNX graphs
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            out = x if out is None else out + x
        return self.classifier(self.dropout(out))


class SemanticFPNHead(nn.Module):
    """FPN neck (256 channels) followed by the FPN head (128 channels); ``norm`` as in FPNHead."""

    def __init__(self, in_channels: tuple[int, ...], num_classes: int, neck_channels: int = 256,
                 head_channels: int = 128, dropout: float = 0.1,
                 strides: tuple[int, ...] = (4, 8, 16, 32), norm: bool = True) -> None:
        super().__init__()
        self.norm = norm
        self.neck = FPNNeck(in_channels, neck_channels)
        self.head = FPNHead(len(in_channels), num_classes, neck_channels, head_channels,
                            strides=strides, dropout=dropout, norm=norm)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head(self.neck(features))
