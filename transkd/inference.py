"""Turning a network into full-size logits: whole image or sliding windows, multi-scale + flip.

Shared by evaluation, prediction and the config schema (whose ``eval`` section is an
:class:`InferenceOptions`), so it sits below all three and imports only torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

INFERENCE_MODES = ("whole", "slide")

@dataclass
class InferenceOptions:
    """How to turn a network into full-size logits.

    ``mode`` "whole" runs the full image once; "slide" runs ``crop`` windows every ``stride``
    pixels (default 2/3 of the crop) and averages overlapping logits. ``scales`` resize the
    input (per scale) and ``flip`` adds mirrored passes; with more than one pass the softmax
    probabilities are averaged. Sizes are (height, width).
    """

    mode: str = "whole"
    crop: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False

    def __post_init__(self) -> None:
        for name in ("crop", "stride", "scales"):
            value = getattr(self, name)
            if isinstance(value, list):
                setattr(self, name, tuple(value))
            elif isinstance(value, int) and name != "scales":
                setattr(self, name, (value, value))
            elif isinstance(value, (int, float)) and name == "scales":
                setattr(self, name, (float(value),))

    def validate(self) -> InferenceOptions:
        """Raise ValueError naming the first invalid field; return self."""
        if self.mode not in INFERENCE_MODES:
            raise ValueError(f"inference option 'mode' must be one of {', '.join(INFERENCE_MODES)}, "
                             f"got {self.mode!r}")
        for name in ("crop", "stride"):
            value = getattr(self, name)
            if value is not None and not is_size(value):
                raise ValueError(f"inference option {name!r} must be a (height, width) pair of positive "
                                 f"integers, got {value!r}")
        if self.mode == "slide" and self.crop is None:
            raise ValueError("inference option 'crop' is required when 'mode' is 'slide'")
        if (not isinstance(self.scales, tuple) or not self.scales
                or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0
                           for s in self.scales)):
            raise ValueError(f"inference option 'scales' must be a non-empty list of positive numbers, "
                             f"got {self.scales!r}")
        if not isinstance(self.flip, bool):
            raise ValueError(f"inference option 'flip' must be true or false, got {self.flip!r}")
        return self

    def window_stride(self) -> tuple[int, int]:
        if self.stride is not None:
            return self.stride
        return max(1, self.crop[0] * 2 // 3), max(1, self.crop[1] * 2 // 3)


def is_size(value: object) -> bool:
    """A (height, width) pair of positive integers, as a tuple or list."""
    return (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))


def _logits_of(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    out = model(images)
    return out if isinstance(out, torch.Tensor) else out.logits


def _resize(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def whole_inference(model: nn.Module, images: torch.Tensor, out_size: Sequence[int]) -> torch.Tensor:
    """One forward pass, logits resized (bilinear) to ``out_size``."""
    return _resize(_logits_of(model, images), out_size)


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Window origins covering [0, length): every ``stride``, the last one flush with the end."""
    if length <= crop:
        return [0]
    count = math.ceil((length - crop) / stride) + 1
    return [min(i * stride, length - crop) for i in range(count)]


def slide_inference(model: nn.Module, images: torch.Tensor, crop: Sequence[int], stride: Sequence[int],
                    out_size: Sequence[int]) -> torch.Tensor:
    """Sliding-window logits at the input resolution, averaged where windows overlap.

    Windows are ``crop`` large; an image smaller than the crop is padded with zeros on the
    bottom/right (the mean colour for normalised inputs) and the padding is cut off again.
    """
    batch, _, height, width = images.shape
    crop_h, crop_w = crop
    pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
    padded = F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images
    full_h, full_w = padded.shape[-2:]
    total = None
    count = torch.zeros(1, 1, full_h, full_w, device=images.device, dtype=torch.float32)
    for top in window_starts(full_h, crop_h, stride[0]):
        for left in window_starts(full_w, crop_w, stride[1]):
            window = padded[:, :, top:top + crop_h, left:left + crop_w]
            logits = _resize(_logits_of(model, window), window.shape[-2:]).float()
            if total is None:
                total = logits.new_zeros(batch, logits.shape[1], full_h, full_w)
            total[:, :, top:top + crop_h, left:left + crop_w] += logits
            count[:, :, top:top + crop_h, left:left + crop_w] += 1
    logits = (total / count)[:, :, :height, :width]
    return _resize(logits, out_size)


def predict_logits(model: nn.Module, images: torch.Tensor, mode: str = "whole",
                   crop: Sequence[int] | None = None, stride: Sequence[int] | None = None,
                   scales: Sequence[float] = (1.0,), flip: bool = False,
                   out_size: Sequence[int] | None = None) -> torch.Tensor:
    """Logits (B, K, *out_size) for images (B, 3, H, W); ``out_size`` defaults to (H, W).

    A single pass returns the network's logits resized bilinearly. Several passes (scales × flip)
    return log(mean softmax): logits whose softmax is the average of the passes' probabilities.
    """
    opts = InferenceOptions(mode=mode, crop=crop, stride=stride, scales=tuple(scales), flip=flip).validate()
    if images.ndim != 4:
        raise ValueError(f"images must be (batch, 3, height, width), got shape {tuple(images.shape)}")
    height, width = images.shape[-2:]
    out_size = (height, width) if out_size is None else tuple(out_size)

    def run(x: torch.Tensor) -> torch.Tensor:
        if opts.mode == "slide":
            return slide_inference(model, x, opts.crop, opts.window_stride(), out_size)
        return whole_inference(model, x, out_size)

    passes = [(s, f) for s in opts.scales for f in ((False, True) if opts.flip else (False,))]
    if len(passes) == 1 and passes[0][0] == 1.0:
        return run(images)
    probs = None
    for scale, flipped in passes:
        x = images
        if scale != 1.0:
            size = (max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if flipped:
            x = x.flip(-1)
        logits = run(x).float()
        if flipped:
            logits = logits.flip(-1)
        p = logits.softmax(dim=1)
        probs = p if probs is None else probs + p
    return (probs / len(passes)).clamp_min(torch.finfo(torch.float32).tiny).log()
