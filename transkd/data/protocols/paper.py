"""The paper's protocol: TransKD's training recipe, its known defects fixed by default."""

from __future__ import annotations

from typing import Any

from ..transforms import RandomHorizontalFlip, RandomShift, Resize
from .base import Protocol, register_protocol
from .weights import ERFNET_CITYSCAPES_WEIGHTS, ERFNET_DATASETS


@register_protocol
class PaperProtocol(Protocol):
    """Resize to a short side (or a fixed size), flip and ±2 px shift, labels at 1/4 resolution."""

    name = "paper"
    description = ("TransKD's recipe: resize to a short side or fixed size, flip and a small shift, "
                   "labels at a fraction of the input resolution")

    def _resize(self) -> Resize:
        opts = self.options
        if opts.image_size is not None:
            return Resize(size=opts.image_size, label_scale=opts.label_scale)
        return Resize(short_side=opts.short_side, label_scale=opts.label_scale)

    def train_steps(self) -> list:
        opts = self.options
        steps: list = [self._resize(), RandomHorizontalFlip(opts.flip_prob)]
        if opts.max_shift > 0:
            if opts.shift_label_scaled:
                steps.append(RandomShift(opts.max_shift, label_fill=opts.ignore_index,
                                         label_scale=opts.label_scale))
            else:  # the reference: moved by the image's pixel count, void padding, class 0 past the edge
                steps.append(RandomShift(opts.max_shift, label_fill=opts.ignore_index, label_scale=1.0,
                                         label_edge_fill=0))
        return [*steps, self.normalize()]

    def eval_steps(self) -> list:
        return [self._resize(), self.normalize()]

    def eval_resize(self) -> dict[str, Any] | None:
        if self.options.image_size is not None:
            return {"size": list(self.options.image_size)}
        return {"short_side": self.options.short_side} if self.options.short_side else None

    def fixed_input_size(self) -> tuple[int, int] | None:
        size = self.options.image_size
        return tuple(size) if size else None

    def fixed_train_size(self) -> tuple[int, int] | None:
        return self.fixed_input_size()

    def input_size_words(self) -> str:
        size = self.options.image_size
        return f"{size[0]}x{size[1]} (HxW)" if size is not None else f"short side {self.options.short_side}"

    def metric_resolution_words(self) -> str:
        scale = self.options.label_scale
        return "full input resolution" if scale == 1 else f"{scale:g} of the input resolution"

    def default_class_weights(self, dataset_name: str, num_classes: int) -> str:
        """ERFNet's Cityscapes weights on the 19 Cityscapes classes, as the paper trains."""
        if dataset_name in ERFNET_DATASETS and num_classes == len(ERFNET_CITYSCAPES_WEIGHTS):
            return "erfnet"
        return "none"
