"""The field's standard protocol: mmsegmentation's recipe."""

from __future__ import annotations

from typing import Any

from ..transforms import (
    PadTo,
    PhotoMetricDistortion,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResize,
    RandomResizeCrop,
    Resize,
)
from .base import Protocol, register_protocol


@register_protocol
class StandardProtocol(Protocol):
    """Random scale 0.5–2.0, crop with cat_max_ratio 0.75, flip, photometric distortion, mean/std
    inputs, full-resolution labels with ignore 255."""

    name = "standard"
    description = ("mmsegmentation's recipe: random rescale, crop, flip and photometric distortion, "
                   "full-resolution labels")

    def train_steps(self) -> list:
        opts = self.options
        resize = RandomResize(opts.ratio_range, opts.scale)
        if opts.crop_size is not None:
            steps: list = [RandomResizeCrop(resize, RandomCrop(opts.crop_size, opts.cat_max_ratio,
                                                               opts.ignore_index))]
        else:
            steps = [resize]
        steps.append(RandomHorizontalFlip(opts.flip_prob))
        if opts.photometric:
            steps.append(PhotoMetricDistortion())
        steps.append(self.normalize())
        if opts.crop_size is not None:
            # After normalisation, as mmsegmentation does: padded pixels are 0 = the mean colour.
            steps.append(PadTo(opts.crop_size, image_fill=0.0, label_fill=opts.ignore_index))
        return steps

    def eval_steps(self) -> list:
        if self._resizes():
            return [Resize(scale=self.options.scale, keep_label=True), self.normalize()]
        return [self.normalize()]

    def fixed_train_size(self) -> tuple[int, int] | None:
        crop = self.options.crop_size
        return tuple(crop) if crop is not None else None

    def _resizes(self) -> bool:
        return self.options.eval_resize and self.options.scale is not None

    def eval_resize(self) -> dict[str, Any] | None:
        return {"scale": list(self.options.scale)} if self.options.scale is not None else None

    def input_size_words(self) -> str:
        scale = self.options.scale
        return (f"keep-ratio resize to {scale[0]}x{scale[1]} (long x short)" if self._resizes()
                else "original size")

    def metric_resolution_words(self) -> str:
        return "full label resolution"
