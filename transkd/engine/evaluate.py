"""Segmentation metrics and inference: confusion matrix, whole/sliding-window, multi-scale + flip.

IoU is dataset-level: the confusion matrix is summed over every image (and every process) before
TP/(TP+FP+FN) is taken per class. Classes absent from both prediction and ground truth get NaN and
are left out of the mean.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .progress import Progress

INFERENCE_MODES = ("whole", "slide")


class ConfusionMatrix:
    """Counts (ground truth row, prediction column) pairs with ``torch.bincount`` on the data's device.

    Target pixels equal to ``ignore_index`` or outside [0, num_classes) are skipped, which also
    drops the extra void class K of the paper's reference setting.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.mat.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted class ids and targets of the same shape."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape "
                             f"{tuple(target.shape)}")
        k = self.num_classes
        if self.mat.device != pred.device:
            self.mat = self.mat.to(pred.device)
        pred = pred.reshape(-1).long()
        target = target.reshape(-1).to(pred.device).long()
        if pred.numel() and bool(((pred < 0) | (pred >= k)).any()):
            raise ValueError(f"predicted class ids must lie in [0, {k}), got values in "
                             f"[{int(pred.min())}, {int(pred.max())}]")
        valid = (target != self.ignore_index) & (target >= 0) & (target < k)
        index = target[valid] * k + pred[valid]
        self.mat += torch.bincount(index, minlength=k * k).reshape(k, k)

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the matrix over processes when torch.distributed is initialised; a no-op otherwise."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.mat, op=torch.distributed.ReduceOp.SUM)
        return self

    def metrics(self) -> dict:
        """``miou``, ``iou`` (per class), ``acc`` (pixel accuracy), ``macc``, ``class_acc``.

        NaN marks a class with no pixel in ground truth or prediction (IoU) or in ground truth (acc).
        """
        mat = self.mat.detach().to("cpu", torch.float64)
        tp = mat.diagonal()
        gt = mat.sum(dim=1)
        union = gt + mat.sum(dim=0) - tp
        nan = torch.tensor(math.nan, dtype=torch.float64)
        iou = torch.where(union > 0, tp / union.clamp_min(1), nan)
        class_acc = torch.where(gt > 0, tp / gt.clamp_min(1), nan)
        total = gt.sum()
        return {
            "miou": _nanmean(iou),
            "iou": iou.tolist(),
            "acc": float(tp.sum() / total) if total > 0 else math.nan,
            "macc": _nanmean(class_acc),
            "class_acc": class_acc.tolist(),
        }


def _nanmean(values: torch.Tensor) -> float:
    present = values[~values.isnan()]
    return float(present.mean()) if present.numel() else math.nan


# --------------------------------------------------------------------------- inference

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
            if value is not None and not _is_size(value):
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


def _is_size(value) -> bool:
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


# --------------------------------------------------------------------------- evaluation loop

def evaluate(model: nn.Module, loader: Iterable, num_classes: int, ignore_index: int = 255,
             inference: InferenceOptions | None = None, device: torch.device | str = "cpu",
             amp_dtype: torch.dtype | None = None, progress: bool = False) -> dict:
    """Metrics of ``model`` over ``loader`` batches ``{"image", "label"}``, at the label resolution.

    A model with more outputs than ``num_classes`` (the extra void class) is scored on its first
    ``num_classes`` logits. Returns :meth:`ConfusionMatrix.metrics` plus ``"confusion"`` (an int64
    CPU tensor, ground truth × prediction), summed over processes when distributed.
    """
    inference = (inference or InferenceOptions()).validate()
    device = torch.device(device)
    cm = ConfusionMatrix(num_classes, ignore_index, device=device)
    was_training = model.training
    model.eval()
    total = len(loader) if hasattr(loader, "__len__") else 0
    bar = Progress(total, description="evaluate", unit="batch", enabled=progress and total > 0,
                   interval=max(1, total // 10), quiet_for=10.0)
    autocast = (torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    try:
        with torch.inference_mode():
            for batch in loader:
                images = batch["image"].to(device, non_blocking=True)
                labels = batch["label"].to(device, non_blocking=True)
                with autocast:
                    logits = predict_logits(model, images, mode=inference.mode, crop=inference.crop,
                                            stride=inference.stride, scales=inference.scales,
                                            flip=inference.flip, out_size=labels.shape[-2:])
                if logits.shape[1] < num_classes:
                    raise ValueError(f"the model gives {logits.shape[1]} outputs but the dataset has "
                                     f"{num_classes} classes")
                cm.update(logits[:, :num_classes].argmax(dim=1), labels)
                bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    cm.all_reduce()
    result = cm.metrics()
    result["confusion"] = cm.mat.cpu()
    return result
