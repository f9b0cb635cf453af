"""The typed run configuration: YAML in, dotted overrides, the whole config checked up front.

A config has ten sections (``model``, ``teacher``, ``data``, ``protocol``, ``distill``,
``optim``, ``schedule``, ``train``, ``eval``, ``output``); every field has a default, so a YAML
file names only what differs. ``--set optim.lr=1e-4`` overrides one key, the value read as a
YAML scalar (``true``, ``null``, ``[512, 1024]``). :func:`load_config` rejects unknown keys,
wrong types and out-of-range values with a one-sentence :class:`ConfigError` naming the dotted
key, before any data is read or any file is written. Names and types are checked by the one
converter every option goes through (:mod:`transkd.options`); ranges and combinations here.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .data.datasets import check_dataset_options, list_datasets
from .data.protocols import ProtocolOptions
from .data.selection import parse_selection
from .data.unlabelled import REST
from .distill.registry import method_classes, needs_teacher, parse_method, parse_method_options
from .errors import ConfigError, UnknownOptionError
from .inference import InferenceOptions
from .jsonsafe import json_safe
from .models import create_model, get_entry
from .options import Keys, check_ranges, convert

Precision = Literal["fp32", "bf16", "fp16"]
#: ``data.name`` of a run without a labelled dataset.
NO_DATASET = "none"
#: The ratio of unlabelled to labelled images in a batch may not exceed this.
MAX_UNLABELLED_RATIO = 64


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
    #: ``cityscapes``, ``acdc``, ``ade20k``, ``coco_stuff``, ``nyuv2``, ``voc``, ``camvid``, ``folder``
    #: or ``synthetic``;
    #: ``none``: no labelled dataset (distillation on ``unlabelled`` alone, classes from the teacher).
    name: str = "synthetic"
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    #: Dataset-specific keyword arguments (e.g. the synthetic dataset's size).
    options: dict[str, Any] = field(default_factory=dict)
    #: Options of the validation split that differ from ``options`` (e.g. a shorter synthetic split).
    val_options: dict[str, Any] = field(default_factory=dict)
    #: A training sample that cannot be read mid-run: stop naming its file (false), or train on the
    #: next readable one in its place and count it in the log and the summary (true).
    skip_bad_samples: bool = False
    #: Images without labels used beside the labelled training split: a folder or a list of
    #: folders (searched recursively), and/or ``rest``: the training images whose labels
    #: ``labelled_fraction`` leaves out. None: labelled images only.
    unlabelled: str | tuple[str, ...] | None = None
    #: Unlabelled images per labelled image in each batch (train.batch_size × this is whole).
    unlabelled_ratio: float = 1.0
    #: Fraction of the training split's labels kept, a seeded choice (1: all; 0: none).
    labelled_fraction: float = 1.0
    #: Seed of that choice; None: train.seed.
    labelled_seed: int | None = None
    #: Without any labelled validation split (``name: none``): how many unlabelled images (a
    #: seeded choice; they also train) measure the student's agreement with the teacher.
    agreement_images: int = 100
    #: What chooses the checkpoint in ``best/``: ``train_holdout:0.1`` (a seeded 10% of train,
    #: removed from training), ``last`` (no selection) or ``val`` (the reported split itself:
    #: optimistic; how runs were chosen before this key existed). See ``data/selection.py``.
    selection: str = "val"

    @property
    def unlabelled_entries(self) -> tuple[str, ...]:
        """``unlabelled`` as a tuple (empty when None)."""
        if self.unlabelled is None:
            return ()
        return (self.unlabelled,) if isinstance(self.unlabelled, str) else tuple(self.unlabelled)

    @property
    def has_labelled_train(self) -> bool:
        """Whether training sees any label."""
        return self.name != NO_DATASET and self.labelled_fraction > 0


@dataclass
class DistillConfig:
    #: ``none`` (plain training), a method (``transkd_base``) or a combination (``transkd_base+kd``).
    method: str = "none"
    #: Method options (see each method's ``Options``); per method under its name for combinations.
    options: dict[str, Any] = field(default_factory=dict)
    ce_weight: float = 1.0
    #: Evaluate the teacher on the validation split once when distillation starts.
    eval_teacher: bool = True
    #: Train on the teacher's confident predictions on unlabelled images: cross-entropy on the
    #: pixels whose teacher softmax maximum is at least this (term ``pseudo_ce``). None: off.
    pseudo_label_threshold: float | None = None
    #: Weight of ``pseudo_ce``.
    pseudo_label_weight: float = 1.0


@dataclass
class OptimConfig:
    """AdamW over the student and the training-only modules (the paper's settings)."""

    lr: float = 6e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    #: Clip the global gradient norm to this value; None: no clipping.
    grad_clip_norm: float | None = None
    #: Learning rate of the student's decode head as a multiple of ``lr`` (SegFormer: 10).
    head_lr_mult: float = 1.0
    #: Parameters without weight decay: kinds ``norm``, ``bias``, ``pos_embed`` and/or fnmatch
    #: patterns of parameter names (SegFormer: ``[norm, pos_embed]``). See ``engine/optim.py``.
    no_decay: tuple[str, ...] = ()


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

    def check_length(self, total_steps: int) -> None:
        """Refuse a warm-up that fills the whole run: the rate would never reach ``optim.lr``.

        Checked when a run starts, not when a config loads, so old run folders still load."""
        if self.kind != "standard" or self.warmup_iters < total_steps:
            return
        suggestion = max(0, total_steps // 10)
        raise ConfigError(f"config key 'schedule.warmup_iters' ({self.warmup_iters}) is not shorter "
                          f"than the run ({total_steps} optimiser steps), so the learning rate would "
                          f"still be warming up when training ends; use --set "
                          f"schedule.warmup_iters={suggestion} (any value below {total_steps})")


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
    #: Drop an epoch's last incomplete batch (every step the same size); ``false`` trains on it,
    #: as the reference code does (needs ``grad_accum`` 1).
    drop_last: bool = True
    precision: Precision = "fp32"
    seed: int = 0
    deterministic: bool = False
    val_interval: int = 1
    checkpoint_interval: int = 1
    #: Resumable checkpoints kept: 1 (last.pt), 2 (+ previous.pt, the fallback when last.pt is
    #: damaged) or more (+ step_<n>.pt links to the newest ones); bounds a long run's disk use.
    keep_checkpoints: int = 2
    log_interval: int = 10
    num_workers: int = 2
    #: A NaN/inf loss: ``stop`` with a message, or ``skip`` the step and count it.
    nonfinite: Literal["stop", "skip"] = "stop"
    device: str = "auto"
    channels_last: bool = False
    #: Training images stay uint8 until the device and are normalised there (bit-identical);
    #: null: on when training on CUDA, where it cuts the loader's bytes by four.
    normalize_on_device: bool | None = None
    #: Multi-GPU only: synchronise BatchNorm statistics over ranks (SyncBatchNorm, CUDA).
    sync_bn: bool = False
    #: Keep every BatchNorm of the trainable part in inference mode (running statistics).
    freeze_bn: bool = False
    #: Multi-GPU only: let DDP tolerate parameters that get no gradient in a step (a method that
    #: uses part of its adapters per step); off, as every built-in method uses all of them.
    find_unused_parameters: bool = False
    #: Write TensorBoard event files next to metrics.jsonl.
    tensorboard: bool = True
    #: A compute budget that replaces ``epochs``/``iterations``: ``steps:N``, ``macs:X`` (training
    #: MACs, see :data:`TRAINING_MACS_CONVENTION`) or ``seconds:S``; null: no budget.
    budget: str | None = None

    @property
    def interval_unit(self) -> str:
        """What ``val_interval`` and ``checkpoint_interval`` count: ``epochs`` or ``iterations``."""
        return "epochs" if self.epochs is not None else "iterations"


BUDGET_KINDS = ("steps", "macs", "seconds")


@dataclass(frozen=True)
class Budget:
    """A parsed ``train.budget``: what is counted and how much of it a run may spend."""

    kind: str  # one of BUDGET_KINDS
    amount: float

    @property
    def label(self) -> str:
        if self.kind == "steps":
            return f"{int(self.amount)} optimiser steps"
        if self.kind == "macs":
            return f"{self.amount:.3g} training MACs"
        return f"{self.amount:g} s of training steps"


def parse_budget(text: str | None, key: str = "train.budget") -> Budget | None:
    """``"macs:1.2e15"`` → ``Budget("macs", 1.2e15)``; None for no budget."""
    if text is None:
        return None
    kind, _, amount = str(text).partition(":")
    try:
        value = float(amount)
    except ValueError:
        value = -1.0
    if kind.strip() not in BUDGET_KINDS or not (0 < value < float("inf")) \
            or (kind.strip() == "steps" and value != int(value)):
        raise ConfigError(f"config key {key!r} must be steps:N, macs:X or seconds:S with a positive "
                          f"amount (e.g. steps:1000, macs:1.2e15, seconds:3600), got {text!r}")
    return Budget(kind.strip(), value)


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
        return json_safe(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        """Block-style sections with lists of numbers on one line."""
        return yaml.dump(self.to_dict(), Dumper=_ConfigDumper, sort_keys=False)

    @property
    def method_names(self) -> list[str]:
        """The methods of ``distill.method`` (``[]`` for ``none``)."""
        return parse_method(self.distill.method)

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
    sections = {f.name for f in dataclasses.fields(Config)}
    data = {k: v for k, v in data.items() if not (k in sections and v is None)}  # an empty section
    config = convert(Config, data, Keys())
    validate(config)
    return config


class _ConfigDumper(yaml.SafeDumper):
    pass


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(v, (list, dict)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_ConfigDumper.add_representer(list, _represent_list)


# --------------------------------------------------------------------------- ranges and combinations

def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key {key!r} {message}")


def validate(config: Config) -> Config:
    """Ranges and cross-field rules; each failure names the dotted key."""
    for key, name in (("model.name", config.model.name), ("teacher.name", config.teacher.name)):
        if name is not None:
            entry = _known_model(name, key, get_entry)
            _require(entry.kind == "segmentor", key,
                     f"must name a segmentation model, but {name!r} is an encoder")
    _check_model_options(config.model.name, config.model.options)
    _check_optim(config.optim)
    _check_schedule(config)
    _check_train(config.train)
    _require(config.eval.batch_size >= 1, "eval.batch_size",
             f"must be a positive integer, got {config.eval.batch_size}")
    check_ranges(config.eval, Keys("eval."))
    config.protocol.validate(Keys("protocol."))
    _require(config.distill.ce_weight >= 0, "distill.ce_weight",
             f"must be non-negative, got {config.distill.ce_weight}")
    try:
        method_classes(config.distill.method)
    except ConfigError as exc:
        raise ConfigError(f"config key 'distill.method': {exc}") from None
    parse_method_options(config.distill.method, config.distill.options, Keys("distill.options."))
    if needs_teacher(config.distill.method):
        hf_teacher = (config.teacher.name or "").startswith("hf:")  # weights come with the model
        _require(config.teacher.weights is not None or hf_teacher, "teacher.weights",
                 f"must name the teacher's .safetensors file for method {config.distill.method!r}")
    _check_data(config.data)
    selection = parse_selection(config.data.selection)
    _require(selection.mode != "train_holdout" or config.data.has_labelled_train, "data.selection",
             f"({config.data.selection}) holds out labelled training images, but this run has none")
    parse_budget(config.train.budget)
    _check_unlabelled(config)
    return config


def _check_optim(optim: OptimConfig) -> None:
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
    _require(0 < optim.head_lr_mult <= 1000, "optim.head_lr_mult",
             f"must be in (0, 1000], got {optim.head_lr_mult}")
    _require(all(entry.strip() for entry in optim.no_decay), "optim.no_decay",
             "must list kinds (norm, bias, pos_embed) or parameter-name patterns, got an empty entry")


def _check_schedule(config: Config) -> None:
    schedule, train = config.schedule, config.train
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
             "'paper' steps once per epoch, so it needs train.epochs (not train.iterations), "
             "or use --set schedule.kind=standard")


def _check_train(train: TrainConfig) -> None:
    for key in ("batch_size", "grad_accum", "val_interval", "checkpoint_interval", "keep_checkpoints",
                "log_interval"):
        value = getattr(train, key)
        _require(value >= 1, f"train.{key}", f"must be a positive integer, got {value}")
    _require(train.drop_last or train.grad_accum == 1, "train.drop_last",
             f"false needs train.grad_accum 1 (an incomplete batch cannot share an accumulated step), "
             f"got grad_accum {train.grad_accum}")
    _require(train.num_workers >= 0, "train.num_workers",
             f"must be non-negative, got {train.num_workers}")
    _require(train.seed >= 0, "train.seed", f"must be non-negative, got {train.seed}")
    _require(train.device == "auto" or train.device == "cpu" or train.device.startswith("cuda"),
             "train.device", f"must be auto, cpu, cuda or cuda:N, got {train.device!r}")


def _check_data(data: DataConfig) -> None:
    names = [*list_datasets(), NO_DATASET]
    _require(data.name in names, "data.name", f"must be one of {', '.join(names)}, got {data.name!r}")
    if data.name == NO_DATASET:
        for key in ("options", "val_options"):
            _require(not getattr(data, key), f"data.{key}",
                     f"must be empty when data.name is {NO_DATASET!r} (no labelled dataset)")
        return
    for key in ("options", "val_options"):
        check_dataset_options(data.name, getattr(data, key), Keys(f"data.{key}."))


def _check_unlabelled(config: Config) -> None:
    """Ranges of the unlabelled-data keys, and the combinations a run without labels needs."""
    data, distill = config.data, config.distill
    entries = data.unlabelled_entries
    _require(all(e.strip() for e in entries), "data.unlabelled",
             "must name folders of images (or 'rest'), got an empty name")
    _require(0 < data.unlabelled_ratio <= MAX_UNLABELLED_RATIO, "data.unlabelled_ratio",
             f"must be in (0, {MAX_UNLABELLED_RATIO}], got {data.unlabelled_ratio}")
    per_batch = config.train.batch_size * data.unlabelled_ratio
    _require(not entries or not data.has_labelled_train or per_batch == int(per_batch),
             "data.unlabelled_ratio", f"({data.unlabelled_ratio}) times train.batch_size "
             f"({config.train.batch_size}) must be a whole number of unlabelled images per batch")
    _require(0 <= data.labelled_fraction <= 1, "data.labelled_fraction",
             f"must be in [0, 1], got {data.labelled_fraction}")
    _require(data.labelled_seed is None or data.labelled_seed >= 0, "data.labelled_seed",
             f"must be non-negative or null, got {data.labelled_seed}")
    _require(data.agreement_images >= 1, "data.agreement_images",
             f"must be a positive integer, got {data.agreement_images}")
    no_dataset = data.name == NO_DATASET
    _require(not no_dataset or data.labelled_fraction == 1, "data.labelled_fraction",
             f"applies to a labelled dataset, and data.name is {NO_DATASET!r}")
    if REST in entries:
        _require(not no_dataset and data.labelled_fraction < 1, "data.unlabelled",
                 "is 'rest' (the training images whose labels are left out), which needs a labelled "
                 "dataset and data.labelled_fraction below 1")
    _require(not entries or needs_teacher(distill.method), "data.unlabelled",
             f"needs a distillation method with a teacher (method {distill.method!r} learns from "
             "labels alone, so unlabelled images would teach it nothing)")
    if not data.has_labelled_train:
        _require(bool(entries), "data.unlabelled", "must name images to train on: this run keeps no "
                 "label (data.name none or data.labelled_fraction 0)")
        for cls in method_classes(distill.method):
            _require(not cls.label_terms, "distill.method",
                     f"includes {cls.name!r}, whose term(s) {', '.join(cls.label_terms)} need labels, "
                     "and this run keeps none")
    threshold = distill.pseudo_label_threshold
    _require(threshold is None or 0 < threshold <= 1, "distill.pseudo_label_threshold",
             f"must be in (0, 1] or null, got {threshold}")
    _require(threshold is None or needs_teacher(distill.method), "distill.pseudo_label_threshold",
             f"needs a teacher, and method {distill.method!r} has none")
    _require(threshold is None or bool(entries), "distill.pseudo_label_threshold",
             "applies to unlabelled images, and data.unlabelled names none")
    _require(distill.pseudo_label_weight >= 0, "distill.pseudo_label_weight",
             f"must be non-negative, got {distill.pseudo_label_weight}")


def _known_model(name: str, key: str, get_entry):
    try:
        return get_entry(name)
    except ConfigError as exc:
        raise ConfigError(f"config key {key!r}: {exc}") from None


def _check_model_options(name: str, options: dict[str, Any]) -> None:
    """Build the network once to check builder options (only when there are any)."""
    if not options:
        return
    try:
        create_model(name, num_classes=2, **options)
    except UnknownOptionError as exc:
        hint = (f"; did you mean 'model.options.{exc.closest}'?" if exc.closest else
                f"; options of {name}: {', '.join(exc.known)}")
        raise ConfigError(f"unknown config key 'model.options.{exc.name}'{hint}") from None
    except (TypeError, ValueError, ConfigError) as exc:
        raise ConfigError(f"config key 'model.options' does not fit {name!r}: "
                          f"{str(exc).splitlines()[0]}") from None
