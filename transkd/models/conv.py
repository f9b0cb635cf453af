"""A 2-D convolution whose weight gradient is taken the fast way for channels-last maps on the CPU.

Token ↔ grid views make every SegFormer stage map channels-last (see ``layers.tokens_to_grid``),
and oneDNN runs the forward pass and the input gradient of such maps faster than in NCHW. Its
channels-last *weight* gradient, though, is slow for the narrow, dense convolutions of the
decode head and the distillation adapters (measured on an AMD EPYC with AVX2, 2 threads, batch 2):

* 3×3, 64 → 64 channels on a 64×128 map: 35 ms channels-last against 22.5 ms in NCHW; 256 → 256
  (the Semantic FPN head's width) on 64×128: 361 against 170 ms. :func:`conv2d` copies the two
  operands to NCHW for this one gradient (about 1.5 ms each for 2 MB maps) and keeps the
  channels-last path for the rest;
* 1×1, 32 → 256 on 64×128: 10.6 ms; as the matrix product it is (tokens × channels)ᵀ ·
  (tokens × channels) on the same memory, without a copy: 4.2 ms.

The decode heads and the distillation adapters use it: CSF's four units (TransKD's feature
adapter) train 1.19× faster at 256×512 and 1.53× faster at 512×1024, and a whole TransKD-Base
step with a PVTv2-B0 + Semantic FPN student 1.18× faster. Values and gradients are the same
computation (tested against autograd through ``F.conv2d``). Everything else runs ``F.conv2d``
unchanged: NCHW inputs, grouped or dilated convolutions, no autograd, autocast, tracing, export,
``torch.compile`` and other devices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .eager import compiling_or_exporting

#: Off: :func:`conv2d` is plain ``F.conv2d`` (``benchmarks/conv_weight_grad.py`` compares both).
FAST_WEIGHT_GRAD = True


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _channels_last_only(x: torch.Tensor) -> bool:
    return (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
            and not x.is_contiguous())


def _wants_fast_weight_grad(x: torch.Tensor, weight: torch.Tensor, groups: int,
                            dilation: tuple[int, int]) -> bool:
    return (FAST_WEIGHT_GRAD and torch.is_grad_enabled() and weight.requires_grad
            and x.device.type == "cpu" and not compiling_or_exporting() and groups == 1
            and dilation == (1, 1)
            and x.dtype == weight.dtype and not torch.is_autocast_enabled(x.device.type)
            and _channels_last_only(x))


class _ChannelsLastConv2d(torch.autograd.Function):
    """``F.conv2d`` forward; input gradient by oneDNN in channels-last, weight gradient in NCHW
    (or as one matrix product for a 1×1, stride-1, unpadded kernel)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        want_input, want_weight, want_bias = ctx.needs_input_grad[:3]
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_input = grad_weight = grad_bias = None
        if want_input:
            grad_input = torch.ops.aten.convolution_backward(
                grad, x, weight, None, ctx.stride, ctx.padding, [1, 1], False, [0, 0], 1,
                [True, False, False])[0]
        pointwise = (weight.shape[2:] == (1, 1) and ctx.stride == [1, 1]
                     and ctx.padding == [0, 0])
        if pointwise:
            # Channels-last memory is (tokens, channels) row-major: both matrices are views.
            rows = grad.permute(0, 2, 3, 1).reshape(-1, grad.shape[1])
            if want_weight:
                cols = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
                grad_weight = (rows.t() @ cols).view_as(weight)
            if want_bias:
                grad_bias = rows.sum(0)
        elif want_weight or want_bias:
            _, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
                grad.contiguous(), x.contiguous(), weight.contiguous(),
                [weight.shape[0]] if ctx.has_bias else None, ctx.stride, ctx.padding, [1, 1],
                False, [0, 0], 1, [False, want_weight, want_bias])
        return grad_input, grad_weight, grad_bias, None, None


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
           dilation: int | tuple[int, int] = 1, groups: int = 1) -> torch.Tensor:
    """``F.conv2d`` (numeric padding only), with the fast weight gradient of the module
    docstring for channels-last CPU inputs."""
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    if _wants_fast_weight_grad(x, weight, groups, dilation):
        return _ChannelsLastConv2d.apply(x, weight, bias, list(stride), list(padding))
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state-dict keys) that trains through :func:`conv2d`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super().forward(x)
        return conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                      self.groups)
