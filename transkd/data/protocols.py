"""Training/evaluation pipelines: the paper's recipe and the field's standard one.

"paper" follows the TransKD training recipe (short side 512, flip + ±2 px shift, labels at 1/4
resolution). Its known defects are fixed by default and each fix is a switch, so the reference
behaviour stays reachable (:meth:`ProtocolOptions.faithful`):

- ``normalize`` (True): ImageNet mean/std inputs; the reference feeds [0, 1] values.
- ``shift_label_scaled`` (True): the 1/4-resolution label moves by round(px/4) and is padded with
  ignore; the reference moves it by the image's pixel count and pads with class 0.
- ``void_as_extra_class`` (False): the reference maps void to an extra class K of weight 0 and
  trains K+1 outputs.
- ``poly_horizon_epochs`` (None = the training length): the reference decays over 1500 epochs
  while training 1000, so the learning rate never reaches 0.

"standard" is the mmsegmentation recipe: random scale 0.5–2.0, crop with cat_max_ratio 0.75,
flip, photometric distortion, mean/std inputs, full-resolution labels with ignore 255.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError
from ..models.segmentor import IMAGENET_MEAN, IMAGENET_STD
from .transforms import (
    Compose,
    Normalize,
    PadTo,
    PhotoMetricDistortion,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResize,
    RandomResizeCrop,
    RandomShift,
    Resize,
    ToTensor,
    VoidToClass,
)

PROTOCOLS = ("paper", "standard")
CLASS_WEIGHT_MODES = ("auto", "erfnet", "none", "median_freq")

#: ERFNet's fixed Cityscapes class weights (trainId order), used by the paper on Cityscapes and ACDC.
ERFNET_CITYSCAPES_WEIGHTS = (
    2.5959737, 6.741505, 3.5353868, 9.866315, 9.690922, 9.369371, 10.289124, 9.953209, 4.3098087,
    9.490392, 7.674411, 9.396925, 10.347794, 6.3928986, 10.226673, 10.241072, 10.28059, 10.396977,
    10.05567,
)
ERFNET_DATASETS = ("cityscapes", "acdc")


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
                        void_as_extra_class=True, poly_horizon_epochs=1500)
        settings.update(overrides)
        return cls(**settings)

    def to_dict(self) -> dict:
        return asdict(self)

    def num_outputs(self, num_classes: int) -> int:
        """Logit channels the model needs: one more than the classes when void is a class."""
        return num_classes + 1 if self.void_as_extra_class else num_classes

    def input_normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) in [0, 1] units that the pipeline applies; identity when ``normalize`` is off."""
        if self.normalize:
            return tuple(self.mean), tuple(self.std)
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    def resolved_class_weights(self, dataset_name: str, num_classes: int) -> str:
        """The weighting mode "auto" stands for on this dataset."""
        if self.class_weights != "auto":
            return self.class_weights
        if self.name == "paper" and dataset_name in ERFNET_DATASETS and num_classes == 19:
            return "erfnet"
        return "none"

    def validate(self) -> ProtocolOptions:
        """Raise ConfigError (a ValueError) naming the first invalid field; return self."""
        _check(self.name in PROTOCOLS, "name", self.name, f"one of {', '.join(PROTOCOLS)}")
        _check(_is_int(self.ignore_index) and 0 <= self.ignore_index <= 255, "ignore_index",
               self.ignore_index, "an integer in [0, 255] (labels are uint8)")
        for flag in ("normalize", "void_as_extra_class", "shift_label_scaled", "photometric", "eval_resize"):
            _check(isinstance(getattr(self, flag), bool), flag, getattr(self, flag), "true or false")
        for key in ("mean", "std"):
            value = getattr(self, key)
            _check(_is_number_seq(value, 3), key, value, "three numbers")
        _check(all(s > 0 for s in self.std), "std", self.std, "positive")
        _check(_is_number(self.flip_prob) and 0 <= self.flip_prob <= 1, "flip_prob", self.flip_prob,
               "a probability in [0, 1]")
        _check(self.class_weights in CLASS_WEIGHT_MODES, "class_weights", self.class_weights,
               f"one of {', '.join(CLASS_WEIGHT_MODES)}")
        _check(self.short_side is None or (_is_int(self.short_side) and self.short_side > 0),
               "short_side", self.short_side, "a positive integer or null")
        _check(self.image_size is None or _is_size(self.image_size), "image_size", self.image_size,
               "a (height, width) pair of positive integers or null")
        _check(_is_number(self.label_scale) and 0 < self.label_scale <= 1, "label_scale",
               self.label_scale, "a number in (0, 1]")
        _check(_is_int(self.max_shift) and self.max_shift >= 0, "max_shift", self.max_shift,
               "a non-negative integer")
        _check(self.poly_horizon_epochs is None
               or (_is_int(self.poly_horizon_epochs) and self.poly_horizon_epochs > 0),
               "poly_horizon_epochs", self.poly_horizon_epochs, "a positive integer or null")
        _check(self.scale is None or _is_size(self.scale), "scale", self.scale,
               "a (long side, short side) pair of positive integers or null")
        _check(_is_number_seq(self.ratio_range, 2) and 0 < self.ratio_range[0] <= self.ratio_range[1],
               "ratio_range", self.ratio_range, "a (low, high) pair with 0 < low <= high")
        _check(self.crop_size is None or _is_size(self.crop_size), "crop_size", self.crop_size,
               "a (height, width) pair of positive integers or null")
        _check(_is_number(self.cat_max_ratio) and 0 < self.cat_max_ratio <= 1, "cat_max_ratio",
               self.cat_max_ratio, "a number in (0, 1]")
        return self


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_number_seq(value, length: int) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == length and all(_is_number(v) for v in value)


def _is_size(value) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) and v > 0 for v in value)


def _check(ok: bool, field_name: str, value, expected: str) -> None:
    if not ok:
        raise ConfigError(f"protocol option {field_name!r} must be {expected}, got {value!r}")


# --------------------------------------------------------------------------- pipelines

def build_transform(opts: ProtocolOptions, train: bool, num_classes: int | None = None) -> Compose:
    """The pipeline ``(image uint8 HxWx3, label uint8 HxW, rng) -> (float32 (3,H,W), int64 (h,w))``.

    ``num_classes`` is needed only with ``void_as_extra_class`` (void becomes class ``num_classes``).
    Evaluation pipelines draw nothing from the generator, so they are deterministic.
    """
    opts.validate()
    steps = _paper_steps(opts, train) if opts.name == "paper" else _standard_steps(opts, train)
    if opts.void_as_extra_class:
        if not _is_int(num_classes) or not 0 < num_classes < 255:
            raise ConfigError("protocol option 'void_as_extra_class' needs build_transform(..., "
                              f"num_classes=K) with 0 < K < 255, got num_classes={num_classes!r}")
        steps.append(VoidToClass(opts.ignore_index, num_classes))
    steps.append(ToTensor())
    return Compose(steps)


def _normalize(opts: ProtocolOptions) -> Normalize:
    return Normalize(*opts.input_normalization())


def _paper_steps(opts: ProtocolOptions, train: bool) -> list:
    if opts.image_size is not None:
        resize = Resize(size=opts.image_size, label_scale=opts.label_scale)
    else:
        resize = Resize(short_side=opts.short_side, label_scale=opts.label_scale)
    steps = [resize]
    if train:
        steps.append(RandomHorizontalFlip(opts.flip_prob))
        if opts.max_shift > 0:
            if opts.shift_label_scaled:
                shift = RandomShift(opts.max_shift, label_fill=opts.ignore_index,
                                    label_scale=opts.label_scale)
            else:
                shift = RandomShift(opts.max_shift, label_fill=0, label_scale=1.0)
            steps.append(shift)
    steps.append(_normalize(opts))
    return steps


def _standard_steps(opts: ProtocolOptions, train: bool) -> list:
    if not train:
        if opts.eval_resize and opts.scale is not None:
            return [Resize(scale=opts.scale, keep_label=True), _normalize(opts)]
        return [_normalize(opts)]
    resize = RandomResize(opts.ratio_range, opts.scale)
    if opts.crop_size is not None:
        steps: list = [RandomResizeCrop(resize, RandomCrop(opts.crop_size, opts.cat_max_ratio,
                                                           opts.ignore_index))]
    else:
        steps = [resize]
    steps.append(RandomHorizontalFlip(opts.flip_prob))
    if opts.photometric:
        steps.append(PhotoMetricDistortion())
    steps.append(_normalize(opts))
    if opts.crop_size is not None:
        # After normalisation, as mmsegmentation does: padded pixels are 0 = the mean colour.
        steps.append(PadTo(opts.crop_size, image_fill=0.0, label_fill=opts.ignore_index))
    return steps


# --------------------------------------------------------------------------- class weights

def class_weights(dataset_name: str, num_classes: int, opts: ProtocolOptions,
                  dataset: Dataset | None = None) -> torch.Tensor | None:
    """Per-class CE weights (float32), or None for unweighted CE.

    With ``void_as_extra_class`` the tensor has ``num_classes + 1`` entries, the last (void) 0.
    "median_freq" needs ``dataset`` (anything whose items have a ``label`` array).
    """
    mode = opts.resolved_class_weights(dataset_name, num_classes)
    if mode == "erfnet":
        if dataset_name not in ERFNET_DATASETS or num_classes != len(ERFNET_CITYSCAPES_WEIGHTS):
            raise ConfigError(f"protocol option 'class_weights' = 'erfnet' holds only for the 19 "
                              f"Cityscapes classes (cityscapes, acdc), not {dataset_name!r} with "
                              f"{num_classes} classes")
        weights = torch.tensor(ERFNET_CITYSCAPES_WEIGHTS, dtype=torch.float32)
    elif mode == "median_freq":
        if dataset is None:
            raise ConfigError("protocol option 'class_weights' = 'median_freq' needs the training dataset")
        weights = median_frequency_weights((s.label for s in _samples(dataset)), num_classes,
                                           opts.ignore_index)
    elif opts.void_as_extra_class:
        weights = torch.ones(num_classes, dtype=torch.float32)
    else:
        return None
    if opts.void_as_extra_class:
        weights = torch.cat([weights, torch.zeros(1)])
    return weights


def _samples(dataset: Dataset) -> Iterable:
    return (dataset[i] for i in range(len(dataset)))


def median_frequency_weights(labels: Iterable[np.ndarray], num_classes: int,
                             ignore_index: int = 255) -> torch.Tensor:
    """Median-frequency balancing (Eigen & Fergus): weight_c = median(freq) / freq_c.

    freq_c = pixels of class c / labelled pixels of the images that contain c. Classes that never
    occur get weight 1 (they contribute no loss either way).
    """
    class_pixels = np.zeros(num_classes, dtype=np.int64)
    image_pixels = np.zeros(num_classes, dtype=np.int64)
    for label in labels:
        counts = np.bincount(np.asarray(label).ravel(), minlength=256)
        counts[ignore_index] = 0
        if counts[num_classes:].any():
            bad = int(np.flatnonzero(counts[num_classes:])[0]) + num_classes
            raise ConfigError(f"label value {bad} is outside the {num_classes} classes and is not "
                              f"ignore_index {ignore_index}")
        present = counts[:num_classes] > 0
        class_pixels += counts[:num_classes]
        image_pixels[present] += counts.sum()
    seen = class_pixels > 0
    weights = np.ones(num_classes, dtype=np.float64)
    if seen.any():
        freq = class_pixels[seen] / image_pixels[seen]
        weights[seen] = np.median(freq) / freq
    return torch.tensor(weights, dtype=torch.float32)


# --------------------------------------------------------------------------- dataset wrapper

class TransformedDataset(Dataset):
    """A dataset with a pipeline applied; sample ``i`` in epoch ``e`` uses rng [seed, e, i].

    The generator depends on nothing else, so augmentation is identical whatever the number of
    workers or the resume point. Call :meth:`set_epoch` before creating each epoch's iterator
    (with ``persistent_workers`` the workers keep the epoch they were started with).
    """

    def __init__(self, dataset: Dataset, transform, seed: int = 0) -> None:
        if not _is_int(seed) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        if not _is_int(epoch) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        sample = self.dataset[index]
        image, label = self.transform(sample.image, sample.label, self.rng(index))
        return {"image": image, "label": label, "name": sample.name, "index": index}
