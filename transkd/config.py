"""The typed run configuration: YAML in, dotted overrides, the whole config checked up front.

A config has ten sections (``model``, ``teacher``, ``data``, ``protocol``, ``distill``,
``optim``, ``schedule``, ``train``, ``eval``, ``output``); every field has a default, so a YAML
file names only what differs. ``--set optim.lr=1e-4`` overrides one key, the value read as a
YAML scalar (``true``, ``null``, ``[512, 1024]``). :func:`load_config` rejects unknown keys,
wrong types and out-of-range values with a one-sentence :class:`ConfigError` naming the dotted
key, before any data is read or any file is written.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .data.protocols import ProtocolOptions
from .engine.evaluate import InferenceOptions
from .errors import ConfigError

Precision = Literal["fp32", "bf16", "fp16"]


@dataclass
class ModelConfig:
    """The network being trained (the student, or the teacher when training a teacher)."""

    #: A registered segmentor (``transkd.list_models(kind="segmentor")``), e.g. ``segformer_b0``.
    name: str = "segformer_b0"
    #: Weights to start from: a transkd ``.safetensors`` of the same segmentor, or of its encoder
    #: alone (e.g. ImageNet MiT weights converted with ``transkd convert``). None: from scratch.
    init: str | None = None
    #: Extra builder arguments, e.g. ``{drop_path_rate: 0.0, dropout: 0.0}``.
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TeacherConfig:
    """The frozen teacher of distillation, loaded from a transkd ``.safetensors`` file."""

    weights: str | None = None
    #: Expected architecture; None = whatever the weights file says.
    name: str | None = None
    #: For each student class, the teacher class it corresponds to (a teacher of another label set).
    class_map: tuple[int, ...] | None = None


@dataclass
class DataConfig:
    #: ``cityscapes``, ``acdc``, ``nyuv2``, ``voc``, ``camvid``, ``folder`` or ``synthetic``.
    name: str = "synthetic"
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    #: Dataset-specific keyword arguments (e.g. the synthetic dataset's size).
    options: dict[str, Any] = field(default_factory=dict)
    #: Options of the validation split that differ from ``options`` (e.g. a shorter synthetic split).
    val_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DistillConfig:
    #: ``none`` (plain training), a method (``transkd_base``) or a combination (``transkd_base+kd``).
    method: str = "none"
    #: Method options (see each method's ``Options``); per method under its name for combinations.
    options: dict[str, Any] = field(default_factory=dict)
    ce_weight: float = 1.0
    #: Evaluate the teacher on the validation split once when distillation starts.
    eval_teacher: bool = True


@dataclass
class OptimConfig:
    """AdamW over the student and the training-only modules (the paper's settings)."""

    lr: float = 6e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    #: Clip the global gradient norm to this value; None: no clipping.
    grad_clip_norm: float | None = None


@dataclass
class ScheduleConfig:
    """``paper``: poly decay stepped once per epoch; ``standard``: poly per iteration with a
    linear warm-up; ``constant``: no decay."""

    kind: Literal["paper", "standard", "constant"] = "paper"
    power: float = 1.0
    #: Decay horizon in epochs (paper) or iterations (standard); None = the training length.
    #: The reference code decays over 1500 epochs while training 1000.
    horizon: int | None = None
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    #: Final learning rate as a fraction of ``optim.lr``.
    min_lr_ratio: float = 0.0


@dataclass
class TrainConfig:
    """Length, batching, numerics, reproducibility, intervals.

    Give ``epochs`` or ``iterations`` (optimiser steps), not both. ``val_interval`` and
    ``checkpoint_interval`` count epochs when training by epochs, iterations otherwise.
    ``batch_size`` is per process; the global batch is × world size × ``grad_accum``.
    """

    epochs: int | None = 1000
    iterations: int | None = None
    batch_size: int = 2
    grad_accum: int = 1
    precision: Precision = "fp32"
    seed: int = 0
    deterministic: bool = False
    val_interval: int = 1
    checkpoint_interval: int = 1
    log_interval: int = 10
    num_workers: int = 2
    #: A NaN/inf loss: ``stop`` with a message, or ``skip`` the step and count it.
    nonfinite: Literal["stop", "skip"] = "stop"
    device: str = "auto"
    channels_last: bool = False
    #: Multi-GPU only: synchronise BatchNorm statistics over ranks (SyncBatchNorm, CUDA).
    sync_bn: bool = False
    #: Keep every BatchNorm of the trainable part in inference mode (running statistics).
    freeze_bn: bool = False
    #: Multi-GPU only: let DDP tolerate parameters that get no gradient in a step (a method that
    #: uses part of its adapters per step); off, as every built-in method uses all of them.
    find_unused_parameters: bool = False
    #: Write TensorBoard event files next to metrics.jsonl.
    tensorboard: bool = True


@dataclass
class EvalConfig(InferenceOptions):
    """How predictions are made for validation and ``transkd eval``: whole image or sliding
    window (``crop``/``stride``, (height, width)), ``scales`` and ``flip`` for test-time
    augmentation, and the evaluation batch size."""

    batch_size: int = 1


@dataclass
class OutputConfig:
    #: Run folder; None = ``runs/<dataset>/<run name>``.
    dir: str | None = None


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    protocol: ProtocolOptions = field(default_factory=ProtocolOptions)
    distill: DistillConfig = field(default_factory=DistillConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-safe values (tuples become lists)."""
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        """Block-style sections with lists of numbers on one line."""
        return yaml.dump(self.to_dict(), Dumper=_ConfigDumper, sort_keys=False)

    @property
    def method_names(self) -> list[str]:
        names = [n.strip() for n in self.distill.method.split("+") if n.strip()]
        return [] if names == ["none"] else names

    def schedule_horizon(self) -> int | None:
        """The decay horizon: ``schedule.horizon``, else the protocol's paper horizon."""
        if self.schedule.horizon is not None:
            return self.schedule.horizon
        return self.protocol.poly_horizon_epochs if self.schedule.kind == "paper" else None


# --------------------------------------------------------------------------- loading

def load_config(path: str | Path | None = None, overrides: Iterable[str] = (),
                base: Mapping[str, Any] | None = None) -> Config:
    """Read a YAML file (or start from ``base``/defaults), apply ``key=value`` overrides,
    and return the validated :class:`Config`."""
    data: dict[str, Any] = copy.deepcopy(dict(base or {}))
    if path is not None:
        data = merge(data, read_yaml(path))
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(data, key, value)
        if key in _EXCLUSIVE and value is not None:  # the length given last wins
            set_dotted(data, _EXCLUSIVE[key], None)
    return config_from_dict(data)


#: Training length is epochs or iterations; setting one by override clears the other.
_EXCLUSIVE = {"train.epochs": "train.iterations", "train.iterations": "train.epochs"}


class _Loader(yaml.SafeLoader):
    """YAML with 1.2 number syntax: ``6e-5`` is a float (YAML 1.1 would read a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)
                |[-+]?(?:[0-9][0-9_]*)?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got "
                          f"{type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """``"optim.lr=1e-4"`` → ``("optim.lr", 0.0001)``; the value is a YAML scalar or list."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: {'.'.join(parts[:depth + 1])!r} is a value, "
                              "not a section")
        node = child
    node[parts[-1]] = value


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Type-check every key into a :class:`Config`, then check ranges and combinations."""
    train = data.get("train")
    if isinstance(train, Mapping) and train.get("iterations") is not None and "epochs" not in train:
        data = merge(data, {"train": {"epochs": None}})  # iterations replace the default epochs
    config = build_dataclass(Config, data, prefix="")
    validate(config)
    return config


# --------------------------------------------------------------------------- typed conversion

def build_dataclass(schema: type, data: Any, prefix: str):
    """``schema(**data)`` with every field converted to its annotated type."""
    where = prefix.rstrip(".") or "the config"
    if not isinstance(data, Mapping):
        raise ConfigError(f"config key {where!r} must be a section (a mapping), got {data!r}")
    hints = typing.get_type_hints(schema)
    names = [f.name for f in dataclasses.fields(schema) if f.init]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {prefix + close[0]!r}?" if close else \
                f"; keys of {where}: {', '.join(names)}"
            raise ConfigError(f"unknown config key {prefix + str(key)!r}{hint}")
    values = {key: convert(value, hints[key], prefix + key) for key, value in data.items()}
    return schema(**values)


def convert(value: Any, hint: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, {} if value is None else value, key + ".")
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if value is None:
            if type(None) in args:
                return None
            raise _type_error(key, hint, value)
        for option in options:
            try:
                return convert(value, option, key)
            except ConfigError:
                continue
        raise _type_error(key, hint, value)
    if origin is Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        raise _type_error(key, hint, value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key, hint, value)
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(key, hint, value)
    if hint is float:
        number = _as_float(value)
        if number is None:
            raise _type_error(key, hint, value)
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        raise _type_error(key, hint, value)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, hint, value)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise _type_error(key, hint, value)
            items = [convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            element = args[0] if args else Any
            items = [convert(v, element, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _type_error(key, hint, value)
        if any(not isinstance(k, str) for k in value):
            raise ConfigError(f"config key {key!r} must have string keys, got {dict(value)!r}")
        element = args[1] if len(args) == 2 else Any
        return {k: convert(v, element, f"{key}.{k}") for k, v in value.items()}
    raise ConfigError(f"config key {key!r} has an unsupported type {hint!r}")


def _as_float(value: Any) -> float | None:
    """Numbers, and strings YAML 1.1 leaves unparsed such as ``6e-5``; finite only."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [describe(a) for a in args if a is not type(None)]
        text = " or ".join(parts)
        return text + " or null" if type(None) in args else text
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(describe(args[0]))}"
        return f"a list of {len(args)} {_plural(describe(args[0]))}" if args else "a list"
    if origin is list:
        return f"a list of {_plural(describe(args[0]))}" if args else "a list"
    if origin is dict:
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a finite number",
            str: "a string"}.get(hint, getattr(hint, "__name__", str(hint)))


def _plural(text: str) -> str:
    return {"an integer": "integers", "a finite number": "numbers", "a string": "strings",
            "true or false": "booleans"}.get(text, text)


def _type_error(key: str, hint: Any, value: Any) -> ConfigError:
    return ConfigError(f"config key {key!r} must be {describe(hint)}, got {value!r}")


class _ConfigDumper(yaml.SafeDumper):
    pass


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(v, (list, dict)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_ConfigDumper.add_representer(list, _represent_list)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- ranges and combinations

def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key {key!r} {message}")


def validate(config: Config) -> Config:
    """Ranges and cross-field rules; each failure names the dotted key."""
    from .distill import get_method
    from .models import get_entry

    for key, name in (("model.name", config.model.name), ("teacher.name", config.teacher.name)):
        if name is not None:
            entry = _known_model(name, key, get_entry)
            _require(entry.kind == "segmentor", key,
                     f"must name a segmentation model, but {name!r} is an encoder")
    _check_model_options(config.model.name, config.model.options)

    train, optim, schedule = config.train, config.optim, config.schedule
    _require(optim.lr > 0, "optim.lr", f"must be positive, got {optim.lr}")
    _require(optim.lr <= 1, "optim.lr", f"must be at most 1 (AdamW steps each weight by about lr), "
             f"got {optim.lr}")
    _require(all(0 <= b < 1 for b in optim.betas), "optim.betas",
             f"must be two numbers in [0, 1), got {list(optim.betas)}")
    _require(optim.eps > 0, "optim.eps", f"must be positive, got {optim.eps}")
    _require(optim.weight_decay >= 0, "optim.weight_decay",
             f"must be non-negative, got {optim.weight_decay}")
    _require(optim.grad_clip_norm is None or optim.grad_clip_norm > 0, "optim.grad_clip_norm",
             f"must be positive or null, got {optim.grad_clip_norm}")

    _require(schedule.power > 0, "schedule.power", f"must be positive, got {schedule.power}")
    _require(schedule.horizon is None or schedule.horizon > 0, "schedule.horizon",
             f"must be a positive integer or null, got {schedule.horizon}")
    _require(schedule.warmup_iters >= 0, "schedule.warmup_iters",
             f"must be non-negative, got {schedule.warmup_iters}")
    _require(0 < schedule.warmup_ratio <= 1, "schedule.warmup_ratio",
             f"must be in (0, 1], got {schedule.warmup_ratio}")
    _require(0 <= schedule.min_lr_ratio < 1, "schedule.min_lr_ratio",
             f"must be in [0, 1), got {schedule.min_lr_ratio}")
    horizon_from_protocol = config.protocol.poly_horizon_epochs
    _require(schedule.horizon is None or horizon_from_protocol is None
             or schedule.horizon == horizon_from_protocol, "schedule.horizon",
             f"({schedule.horizon}) contradicts protocol.poly_horizon_epochs "
             f"({horizon_from_protocol}); set one of them")

    _require((train.epochs is None) != (train.iterations is None), "train.epochs",
             "and 'train.iterations' are exclusive: set exactly one (e.g. --set train.epochs=null "
             "--set train.iterations=2000)")
    for key in ("epochs", "iterations"):
        value = getattr(train, key)
        _require(value is None or value > 0, f"train.{key}", f"must be positive, got {value}")
    _require(schedule.kind != "paper" or train.epochs is not None, "schedule.kind",
             "'paper' steps once per epoch, so it needs train.epochs (not train.iterations)")
    for key in ("batch_size", "grad_accum", "val_interval", "checkpoint_interval", "log_interval"):
        value = getattr(train, key)
        _require(value >= 1, f"train.{key}", f"must be a positive integer, got {value}")
    _require(train.num_workers >= 0, "train.num_workers",
             f"must be non-negative, got {train.num_workers}")
    _require(train.seed >= 0, "train.seed", f"must be non-negative, got {train.seed}")
    _require(train.device == "auto" or train.device == "cpu" or train.device.startswith("cuda"),
             "train.device", f"must be auto, cpu, cuda or cuda:N, got {train.device!r}")

    _require(config.eval.batch_size >= 1, "eval.batch_size",
             f"must be a positive integer, got {config.eval.batch_size}")
    try:
        config.eval.validate()
    except ValueError as exc:
        raise ConfigError(str(exc).replace("inference option '", "config key 'eval.")) from None
    try:
        config.protocol.validate()
    except ValueError as exc:
        raise ConfigError(str(exc).replace("protocol option '", "config key 'protocol.")) from None

    _require(config.distill.ce_weight >= 0, "distill.ce_weight",
             f"must be non-negative, got {config.distill.ce_weight}")
    names = config.method_names
    _require(len(set(names)) == len(names), "distill.method",
             f"names a method twice: {config.distill.method!r}")
    classes = []
    for name in names:
        try:
            classes.append(get_method(name))
        except ConfigError as exc:
            raise ConfigError(f"config key 'distill.method': {exc}") from None
    _check_method_options(config, classes)
    if any(cls.uses_teacher for cls in classes):
        hf_teacher = (config.teacher.name or "").startswith("hf:")  # weights come with the model
        _require(config.teacher.weights is not None or hf_teacher, "teacher.weights",
                 f"must name the teacher's .safetensors file for method {config.distill.method!r}")

    from .data import list_datasets

    _require(config.data.name in list_datasets(), "data.name",
             f"must be one of {', '.join(list_datasets())}, got {config.data.name!r}")
    return config


def _known_model(name: str, key: str, get_entry):
    try:
        return get_entry(name)
    except ConfigError as exc:
        raise ConfigError(f"config key {key!r}: {exc}") from None


def _check_model_options(name: str, options: dict[str, Any]) -> None:
    """Build the network once to check builder options (only when there are any)."""
    if not options:
        return
    from .models import create_model

    try:
        create_model(name, num_classes=2, **options)
    except (TypeError, ValueError, ConfigError) as exc:
        raise ConfigError(f"config key 'model.options' does not fit {name!r}: "
                          f"{str(exc).splitlines()[0]}") from None


def _check_method_options(config: Config, classes: list) -> None:
    options = config.distill.options
    if not classes:
        _require(not options, "distill.options",
                 f"must be empty for method 'none', got {sorted(options)}")
        return
    if len(classes) == 1:
        per_method = {classes[0].name: options}
    else:
        extra = sorted(set(options) - {c.name for c in classes})
        _require(not extra, "distill.options",
                 f"must hold one mapping per method ({', '.join(c.name for c in classes)}); "
                 f"unexpected {extra}")
        per_method = options
    for cls in classes:
        values = per_method.get(cls.name, {})
        _require(isinstance(values, Mapping), f"distill.options.{cls.name}",
                 f"must be a mapping, got {values!r}")
        try:
            cls.parse_options(dict(values))
        except ConfigError as exc:
            raise ConfigError(f"config key 'distill.options': {exc}") from None


def distiller_options(config: Config) -> dict[str, Any]:
    """Keyword options for :func:`transkd.distill.create_distiller`."""
    return dict(config.distill.options)
