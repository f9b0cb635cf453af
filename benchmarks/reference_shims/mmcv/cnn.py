"""mmcv 1.3 ``ConvModule`` (conv → norm → activation) for the configurations the reference uses."""

from torch import nn


class ConvModule(nn.Module):
    """Conv2d (bias only without a norm, mmcv's ``bias='auto'``), optional BN, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1, bias="auto",
                 conv_cfg=None, norm_cfg=None, act_cfg=None, inplace: bool = True) -> None:
        super().__init__()
        act_cfg = {"type": "ReLU"} if act_cfg is None else act_cfg
        if conv_cfg is not None:
            raise ValueError(f"this stand-in supports only the default conv_cfg, got {conv_cfg}")
        if norm_cfg is not None and norm_cfg.get("type") != "BN":
            raise ValueError(f"this stand-in supports only BN norm_cfg, got {norm_cfg}")
        if act_cfg and act_cfg.get("type") != "ReLU":
            raise ValueError(f"this stand-in supports only ReLU act_cfg, got {act_cfg}")
        with_norm = norm_cfg is not None
        use_bias = not with_norm if bias == "auto" else bias
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                              groups, bias=use_bias)
        self.bn = nn.BatchNorm2d(out_channels) if with_norm else None
        self.activate = nn.ReLU(inplace=inplace) if act_cfg else None
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.activate is not None:
            x = self.activate(x)
        return x


class DepthwiseSeparableConvModule(nn.Module):
    """Depth-wise ConvModule followed by a point-wise ConvModule (imported, unused by SegFormer)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, norm_cfg=None, act_cfg=None, **kwargs) -> None:
        super().__init__()
        self.depthwise_conv = ConvModule(in_channels, in_channels, kernel_size, stride, padding,
                                         dilation, groups=in_channels, norm_cfg=norm_cfg,
                                         act_cfg=act_cfg, **kwargs)
        self.pointwise_conv = ConvModule(in_channels, out_channels, 1, norm_cfg=norm_cfg,
                                         act_cfg=act_cfg, **kwargs)

    def forward(self, x):
        return self.pointwise_conv(self.depthwise_conv(x))
