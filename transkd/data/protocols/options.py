"""Every choice of a data pipeline, as one typed option set (the config's ``protocol`` section).

The defaults are the "paper" recipe with its known defects fixed; each fix is a switch, so the
reference behaviour stays reachable (:meth:`ProtocolOptions.faithful`):

- ``normalize`` (True): ImageNet mean/std inputs; the reference feeds [0, 1] values.
- ``shift_label_scaled`` (True): the 1/4-resolution label moves by round(px/4) and is padded with
  ignore; the reference moves it by the image's pixel count, pads a positive shift with void and
  leaves class 0 where a negative shift's crop runs past the label's edge.
- ``void_as_extra_class`` (False): the reference maps void to an extra class K of weight 0 and
  trains K+1 outputs.
- ``void_prediction_false_negative`` (False): with the void output, the reference's evaluation
  lets the network predict void and counts it as a false negative of the pixel's class.
- ``poly_horizon_epochs`` (None = the training length): the reference decays over 1500 epochs
  while training 1000, so the learning rate never reaches 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

from ...models.segmentor import IMAGENET_MEAN, IMAGENET_STD
from ...options import Keys, convert, range_error

if TYPE_CHECKING:
    from .base import Protocol

CLASS_WEIGHT_MODES = ("auto", "erfnet", "none", "median_freq")

#: How errors name these options outside a config file.
PROTOCOL_KEYS = Keys(noun="protocol option")


@dataclass
class ProtocolOptions:
    """Every choice of a data pipeline; the defaults are the "paper" recipe with its defects fixed.

    Sizes are (height, width); ``scale`` is an mmsegmentation (long side, short side) bound.
    Fields marked "paper" or "standard" apply to that protocol only.
    """

    name: str = "paper"
    ignore_index: int = 255
    normalize: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    flip_prob: float = 0.5
    void_as_extra_class: bool = False
    #: With the void output: evaluation predicts over it too, and a void prediction counts as a
    #: false negative of the pixel's class (the reference code's ``iouEval``).
    void_prediction_false_negative: bool = False
    #: "auto" = "erfnet" for the paper protocol on 19-class cityscapes/acdc, else "none".
    class_weights: str = "auto"
    # paper
    short_side: int | None = 512
    image_size: tuple[int, int] | None = None  # fixed (height, width); overrides short_side
    label_scale: float = 0.25
    max_shift: int = 2
    shift_label_scaled: bool = True
    #: Epochs over which the poly schedule decays; None = the training length. Read by the trainer.
    poly_horizon_epochs: int | None = None
    # standard
    scale: tuple[int, int] | None = None  # None: random ratio of the image's own size
    ratio_range: tuple[float, float] = (0.5, 2.0)
    crop_size: tuple[int, int] | None = (512, 1024)
    cat_max_ratio: float = 0.75
    photometric: bool = True
    eval_resize: bool = True  # resize eval images to ``scale`` (labels stay full size)

    def __post_init__(self) -> None:
        # YAML gives lists; keep tuples so options compare and hash predictably.
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                setattr(self, f.name, tuple(value))

    @classmethod
    def faithful(cls, **overrides) -> ProtocolOptions:
        """The paper protocol exactly as the reference code runs it, defects included."""
        settings = dict(name="paper", normalize=False, shift_label_scaled=False,
                        void_as_extra_class=True, void_prediction_false_negative=True,
                        poly_horizon_epochs=1500)
        settings.update(overrides)
        return cls(**settings)

    def to_dict(self) -> dict:
        return asdict(self)

    def protocol(self) -> Protocol:
        """The registered protocol ``name`` with these options."""
        from .base import get_protocol  # the registry's module reads these options' type

        return get_protocol(self.name)(self)

    def num_outputs(self, num_classes: int) -> int:
        """Logit channels the model needs (the protocol's output convention)."""
        return self.protocol().num_outputs(num_classes)

    def input_normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) in [0, 1] units that the pipeline applies; identity when ``normalize`` is off."""
        if self.normalize:
            return tuple(self.mean), tuple(self.std)
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    def resolved_class_weights(self, dataset_name: str, num_classes: int) -> str:
        """The weighting mode "auto" stands for on this dataset (the protocol's default)."""
        if self.class_weights != "auto":
            return self.class_weights
        return self.protocol().default_class_weights(dataset_name, num_classes)

    def validate(self, keys: Keys = PROTOCOL_KEYS) -> ProtocolOptions:
        """Check names and types (the shared converter), then ranges; return self.

        Errors are ConfigErrors naming the field through ``keys`` (``protocol.crop_size`` in a
        config, ``protocol option 'crop_size'`` otherwise)."""
        convert(ProtocolOptions, self.to_dict(), keys, check=False)
        try:
            self._check_ranges()
        except ValueError as exc:
            raise range_error(str(exc), [f.name for f in fields(self)], keys) from None
        return self

    def _check_ranges(self) -> None:
        from .base import list_protocols  # the registry's module reads these options' type

        _check(self.name in list_protocols(), "name", self.name, f"one of {', '.join(list_protocols())}")
        _check(0 <= self.ignore_index <= 255, "ignore_index", self.ignore_index,
               "an integer in [0, 255] (labels are uint8)")
        _check(all(s > 0 for s in self.std), "std", self.std, "three positive numbers")
        _check(self.void_as_extra_class or not self.void_prediction_false_negative,
               "void_prediction_false_negative", self.void_prediction_false_negative,
               "false unless void_as_extra_class is true (there is no void output to predict)")
        _check(0 <= self.flip_prob <= 1, "flip_prob", self.flip_prob, "a probability in [0, 1]")
        _check(self.class_weights in CLASS_WEIGHT_MODES, "class_weights", self.class_weights,
               f"one of {', '.join(CLASS_WEIGHT_MODES)}")
        _check(self.short_side is None or self.short_side > 0, "short_side", self.short_side,
               "a positive integer or null")
        _check(self.image_size is None or min(self.image_size) > 0, "image_size", self.image_size,
               "a (height, width) pair of positive integers or null")
        _check(0 < self.label_scale <= 1, "label_scale", self.label_scale, "a number in (0, 1]")
        _check(self.max_shift >= 0, "max_shift", self.max_shift, "a non-negative integer")
        _check(self.poly_horizon_epochs is None or self.poly_horizon_epochs > 0,
               "poly_horizon_epochs", self.poly_horizon_epochs, "a positive integer or null")
        _check(self.scale is None or min(self.scale) > 0, "scale", self.scale,
               "a (long side, short side) pair of positive integers or null")
        _check(0 < self.ratio_range[0] <= self.ratio_range[1], "ratio_range", self.ratio_range,
               "a (low, high) pair with 0 < low <= high")
        _check(self.crop_size is None or min(self.crop_size) > 0, "crop_size", self.crop_size,
               "a (height, width) pair of positive integers or null")
        _check(0 < self.cat_max_ratio <= 1, "cat_max_ratio", self.cat_max_ratio, "a number in (0, 1]")


def _check(ok: bool, field_name: str, value, expected: str) -> None:
    if not ok:
        raise ValueError(f"{field_name} must be {expected}, got {value!r}")
