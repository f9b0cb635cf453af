"""A protocol is one object: its pipelines, evaluation resize, output convention and description.

Each protocol is a :class:`Protocol` subclass registered by name (``protocol.name`` in a config);
a new protocol is one new class in one module, imported by this package's ``__init__``.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from ...errors import ConfigError
from ..transforms import Compose, MarkValid, Normalize, PadTo, ToTensor, VoidToClass
from .options import ProtocolOptions

_PROTOCOLS: dict[str, type[Protocol]] = {}


def register_protocol(cls: type[Protocol]) -> type[Protocol]:
    """Class decorator: make a protocol available by its ``name``."""
    if not cls.name or cls.name in _PROTOCOLS:
        raise ValueError(f"protocol name {cls.name!r} is empty or registered twice")
    _PROTOCOLS[cls.name] = cls
    return cls


def list_protocols() -> list[str]:
    return list(_PROTOCOLS)


def get_protocol(name: str) -> type[Protocol]:
    try:
        return _PROTOCOLS[name]
    except KeyError:
        raise ConfigError(f"unknown protocol {name!r}; known protocols: "
                          f"{', '.join(list_protocols())}") from None


class Protocol(abc.ABC):
    """A training and evaluation recipe over :class:`ProtocolOptions`.

    Subclasses set ``name`` and ``description`` and give their train and evaluation steps (before
    the shared void mapping and tensor conversion), how evaluation resizes an image, and the
    words that say what the evaluation input and metric resolution are.
    """

    name: ClassVar[str] = ""
    #: One line saying what the recipe does.
    description: ClassVar[str] = ""

    def __init__(self, options: ProtocolOptions) -> None:
        self.options = options

    @abc.abstractmethod
    def train_steps(self) -> list:
        """Joint (image, label) steps of training, ending with normalisation."""

    @abc.abstractmethod
    def eval_steps(self) -> list:
        """Joint steps of evaluation; they draw nothing from the generator."""

    @abc.abstractmethod
    def eval_resize(self) -> dict[str, Any] | None:
        """How evaluation resizes an image (``{"short_side": 512}``, ``{"size": [h, w]}``,
        ``{"scale": [long, short]}``), for prediction to do the same; None: no resize."""

    @abc.abstractmethod
    def input_size_words(self) -> str:
        """What the network sees in evaluation, in words."""

    @abc.abstractmethod
    def metric_resolution_words(self) -> str:
        """At which resolution the metrics are computed, in words."""

    def fixed_input_size(self) -> tuple[int, int] | None:
        """The (height, width) of every evaluation input when the protocol fixes it."""
        return None

    def fixed_train_size(self) -> tuple[int, int] | None:
        """The (height, width) every training input has when the protocol fixes it (a fixed
        resize or a padded crop); None when it follows each image's own size."""
        return None

    def default_class_weights(self, dataset_name: str, num_classes: int) -> str:
        """The class-weight mode ``class_weights: auto`` stands for."""
        return "none"

    def num_outputs(self, num_classes: int) -> int:
        """Logit channels the model needs: one more than the classes when void is a class."""
        return num_classes + 1 if self.options.void_as_extra_class else num_classes

    def normalize(self) -> Normalize:
        return Normalize(*self.options.input_normalization())

    def transform(self, train: bool, num_classes: int | None = None,
                  normalize_on_device: bool = False) -> Compose:
        """The pipeline ``(image uint8 HxWx3, label uint8 HxW, rng) -> (float32 (3,H,W), int64 (h,w))``;
        with ``void_as_extra_class`` void becomes class ``num_classes``.

        ``normalize_on_device``: images stay uint8 (3 or 4, H, W) and the pipeline's ``deferred``
        :class:`Normalize` turns a batch of them into exactly the float32 batch it would have
        made (:meth:`Normalize.batch`), so a loader worker moves a quarter of the bytes."""
        steps = self.train_steps() if train else self.eval_steps()
        deferred = None
        if normalize_on_device:
            steps, deferred = _defer_normalisation(steps)
        if self.options.void_as_extra_class:
            if isinstance(num_classes, bool) or not isinstance(num_classes, int) \
                    or not 0 < num_classes < 255:
                raise ConfigError("protocol option 'void_as_extra_class' needs build_transform(..., "
                                  f"num_classes=K) with 0 < K < 255, got num_classes={num_classes!r}")
            steps.append(VoidToClass(self.options.ignore_index, num_classes))
        steps.append(ToTensor(keep_uint8=deferred is not None))
        return Compose(steps, deferred=deferred)

    def words(self) -> dict[str, str]:
        """The protocol's name, evaluation input and metric resolution, for logs and reports."""
        return {"protocol": self.name, "input_size": self.input_size_words(),
                "metric_resolution": self.metric_resolution_words()}


def _defer_normalisation(steps: list) -> tuple[list, Normalize]:
    """The steps without their :class:`Normalize`, and that Normalize. Padding after it (which
    fills with 0 = the normalised mean colour) gets :class:`MarkValid`'s channel first, so
    :meth:`Normalize.batch` can restore the 0; any other float step after it cannot be deferred."""
    at = [i for i, step in enumerate(steps) if isinstance(step, Normalize)]
    if len(at) != 1:
        raise ValueError(f"a pipeline to normalise on the device needs exactly one Normalize, got {len(at)}")
    normalize, after = steps[at[0]], steps[at[0] + 1:]
    if not all(isinstance(step, PadTo) for step in after):
        raise ValueError(f"steps after Normalize cannot run on uint8 images: {after}")
    return [*steps[:at[0]], *([MarkValid()] if after else []), *after], normalize


def build_transform(opts: ProtocolOptions, train: bool, num_classes: int | None = None,
                    normalize_on_device: bool = False) -> Compose:
    """The checked protocol's train or evaluation pipeline (see :meth:`Protocol.transform`).

    ``num_classes`` is needed only with ``void_as_extra_class``. Evaluation pipelines draw nothing
    from the generator, so they are deterministic.
    """
    return opts.validate().protocol().transform(train, num_classes, normalize_on_device)
