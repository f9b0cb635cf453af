"""Segmentation metrics: a dataset-level confusion matrix and the evaluation loop over a loader.

IoU is dataset-level: the confusion matrix is summed over every image (and every process) before
TP/(TP+FP+FN) is taken per class. Classes absent from both prediction and ground truth get NaN and
are left out of the mean.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

import torch
from torch import nn

from ..inference import InferenceOptions, predict_logits
from ..progress import Progress


class ConfusionMatrix:
    """Counts (ground truth row, prediction column) pairs with ``torch.bincount`` on the data's device.

    Target pixels equal to ``ignore_index`` or outside [0, num_classes) are skipped, which also
    drops the extra void class K of the paper's reference setting. ``void_column`` adds a
    prediction column K (K × (K+1)): a pixel of class c predicted void is a false negative of c
    and a false positive of no class, as the reference code's ``iouEval`` counts it.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None,
                 void_column: bool = False):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        columns = num_classes + 1 if void_column else num_classes
        self.mat = torch.zeros(num_classes, columns, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.mat.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted class ids and targets of the same shape."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape "
                             f"{tuple(target.shape)}")
        k, columns = self.mat.shape
        if self.mat.device != pred.device:
            self.mat = self.mat.to(pred.device)
        pred = pred.reshape(-1).long()
        target = target.reshape(-1).to(pred.device).long()
        if pred.numel() and bool(((pred < 0) | (pred >= columns)).any()):
            raise ValueError(f"predicted class ids must lie in [0, {columns}), got values in "
                             f"[{int(pred.min())}, {int(pred.max())}]")
        valid = (target != self.ignore_index) & (target >= 0) & (target < k)
        index = target[valid] * columns + pred[valid]
        self.mat += torch.bincount(index, minlength=k * columns).reshape(k, columns)

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
        k = mat.shape[0]
        tp = mat.diagonal()
        gt = mat.sum(dim=1)  # a void column's pixels count here: false negatives
        union = gt + mat[:, :k].sum(dim=0) - tp
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


# --------------------------------------------------------------------------- evaluation loop

def per_image_confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                        ignore_index: int = 255, void_column: bool = False) -> torch.Tensor:
    """(B, K, K) int64 confusion matrices, one per image of a batch (ground truth × prediction),
    with the same pixel rules as :class:`ConfusionMatrix` ((B, K, K+1) with ``void_column``)."""
    k, batch = num_classes, pred.shape[0]
    columns = k + 1 if void_column else k
    pred = pred.reshape(batch, -1).long()
    target = target.reshape(batch, -1).to(pred.device).long()
    valid = (target != ignore_index) & (target >= 0) & (target < k)
    image = torch.arange(batch, device=pred.device)[:, None].expand_as(target)
    index = (image * k * columns + target * columns + pred)[valid]
    return torch.bincount(index, minlength=batch * k * columns).reshape(batch, k, columns).cpu()


def evaluate(model: nn.Module, loader: Iterable, num_classes: int, ignore_index: int = 255,
             inference: InferenceOptions | None = None, device: torch.device | str = "cpu",
             amp_dtype: torch.dtype | None = None, progress: bool = False,
             reference: nn.Module | None = None, per_image: bool = False,
             void_false_negative: bool = False) -> dict:
    """Metrics of ``model`` over ``loader`` batches ``{"image", "label"}``, at the label resolution.

    A model with more outputs than ``num_classes`` (the extra void class) is scored on its first
    ``num_classes`` logits. Returns :meth:`ConfusionMatrix.metrics` plus ``"confusion"`` (an int64
    CPU tensor, ground truth × prediction), summed over processes when distributed. ``per_image``
    adds ``"per_image_confusion"`` (N, K, K) in loader order, this process's images only: the
    report's confidence intervals resample images.

    ``reference`` (a teacher): its predictions, made the same way, replace the labels, so the
    numbers measure agreement with it (pixel agreement and the mIoU of ``model``'s predictions
    against ``reference``'s), for images nobody labelled; ``"label"`` then only gives the size.

    ``void_false_negative`` (a model with the extra void output): predictions range over the void
    output too, and a void prediction is a false negative of the pixel's class (the reference
    code's ``iouEval``); the confusion matrices gain a void column (K × (K+1)).
    """
    images_confusion: list[torch.Tensor] = []
    inference = (inference or InferenceOptions()).validate()
    device = torch.device(device)
    cm = ConfusionMatrix(num_classes, ignore_index, device=device, void_column=void_false_negative)
    scored = num_classes + 1 if void_false_negative else num_classes
    was_training = model.training
    model.eval()
    reference_training = reference is not None and reference.training
    if reference is not None:
        reference.eval()
    predict = dict(mode=inference.mode, crop=inference.crop, stride=inference.stride,
                   scales=inference.scales, flip=inference.flip)
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
                    logits = predict_logits(model, images, **predict, out_size=labels.shape[-2:])
                    if reference is not None:
                        labels = predict_logits(reference, images, **predict,
                                                out_size=labels.shape[-2:])[:, :num_classes].argmax(1)
                if logits.shape[1] < num_classes:
                    raise ValueError(f"the model gives {logits.shape[1]} outputs but the dataset has "
                                     f"{num_classes} classes")
                if void_false_negative and logits.shape[1] < scored:
                    raise ValueError(f"counting void predictions needs the extra void output, but the "
                                     f"model gives {logits.shape[1]} outputs for {num_classes} classes")
                pred = logits[:, :scored].argmax(dim=1)
                cm.update(pred, labels)
                if per_image:
                    images_confusion.append(per_image_confusion(pred, labels, num_classes, ignore_index,
                                                                void_false_negative))
                bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
        if reference is not None:
            reference.train(reference_training)
    cm.all_reduce()
    result = cm.metrics()
    result["confusion"] = cm.mat.cpu()
    if per_image:
        result["per_image_confusion"] = (torch.cat(images_confusion) if images_confusion else
                                         torch.zeros(0, num_classes, scored, dtype=torch.int64))
    return result
