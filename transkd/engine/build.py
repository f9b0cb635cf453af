"""Turn a validated :class:`~transkd.config.Config` into datasets, networks and a Distiller.

Everything here reads inputs and raises one-sentence errors for bad ones (missing dataset
folder, batch larger than the split, a teacher for another class count); nothing writes files,
so a run that fails here leaves no output behind.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
from torch import nn

from ..config import NO_DATASET, Config
from ..data import build_dataset
from ..data.protocols import TransformedDataset, build_transform, class_weights
from ..data.selection import parse_selection, split_for_selection
from ..distill import Distiller, create_distiller, cross_entropy_loss
from ..errors import CheckpointError, ConfigError
from ..models import create_model, get_entry
from ..weights.io import load_model, load_state_strict, model_file, read_safetensors
from .unlabelled import UnlabelledData, split_labels, teacher_classes


@dataclass
class DataBundle:
    """The raw splits and what the rest of the run needs to know about the dataset.

    ``train`` is the labelled training set the run uses (a seeded subset with
    ``data.labelled_fraction``; None when it keeps no label), ``val`` None without a labelled
    dataset (``data.name: none``), ``unlabelled`` the images read without labels."""

    train: object | None
    val: object | None
    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    num_classes: int
    num_outputs: int
    ignore_index: int
    unlabelled: UnlabelledData | None = None
    #: The held-out images that choose the checkpoint (``data.selection: train_holdout:F``), or None.
    selection: object | None = None


def open_datasets(config: Config, train: bool = True, val_split: str | None = None,
                  teacher: nn.Module | None = None) -> DataBundle:
    """Open the train (if asked) and validation splits and the unlabelled images; errors name the
    folder or split. Without a labelled dataset (``data.name: none``) the classes are the
    ``teacher``'s."""
    data = config.data
    if data.name == NO_DATASET:
        if not train or teacher is None:
            raise ConfigError(f"config key 'data.name' is {NO_DATASET!r}, so there is no labelled "
                              "split to evaluate on; name a labelled dataset with --set data.name=... "
                              "and --data")
        _, unlabelled = split_labels(config, None)
        classes = teacher_classes(config, teacher)
        num_classes = len(classes["class_names"])
        return DataBundle(None, None, NO_DATASET, classes["class_names"], classes["palette"],
                          num_classes, config.protocol.num_outputs(num_classes),
                          config.protocol.ignore_index, unlabelled)
    train_set = build_dataset(data.name, data.root, split=data.train_split, **data.options) \
        if train else None
    val_set = build_dataset(data.name, data.root, split=val_split or data.val_split,
                            **{**data.options, **data.val_options})
    for split_set in (train_set, val_set):
        if split_set is not None and len(split_set) == 0:
            raise ConfigError(f"split {split_set.split!r} of dataset {data.name!r} holds no samples")
        if split_set is not None:  # file headers only: unreadable files, label modes, sizes
            split_set.validate()
    held_out = unlabelled = None
    if train_set is not None:  # the held-out images leave training (labelled or not) first
        train_set, held_out = split_for_selection(train_set, parse_selection(data.selection))
        train_set, unlabelled = split_labels(config, train_set)
    num_classes = val_set.num_classes
    return DataBundle(train_set, val_set, data.name, tuple(val_set.class_names),
                      tuple(tuple(c) for c in val_set.palette), num_classes,
                      config.protocol.num_outputs(num_classes), config.protocol.ignore_index,
                      unlabelled, held_out)


def normalizes_on_device(config: Config, device: torch.device) -> bool:
    """Whether training images stay uint8 until ``device`` (``train.normalize_on_device``)."""
    chosen = config.train.normalize_on_device
    return device.type == "cuda" if chosen is None else chosen


def transformed(bundle: DataBundle, config: Config, normalize_on_device: bool = False
                ) -> tuple[TransformedDataset | None, TransformedDataset | None]:
    """The labelled splits with the protocol's train/eval pipelines applied (None where absent);
    ``normalize_on_device``: the training pipeline leaves normalisation to the trainer."""
    opts = config.protocol
    seed = config.train.seed
    train = None
    if bundle.train is not None:
        train = TransformedDataset(bundle.train, build_transform(opts, train=True,
                                                                 num_classes=bundle.num_classes,
                                                                 normalize_on_device=normalize_on_device),
                                   seed,
                                   skip_bad=config.data.skip_bad_samples)
    val = None
    if bundle.val is not None:
        val = TransformedDataset(bundle.val, build_transform(opts, train=False,
                                                             num_classes=bundle.num_classes), seed)
    return train, val


def transformed_selection(bundle: DataBundle, config: Config) -> TransformedDataset | None:
    """The held-out selection images through the evaluation pipeline (None: no holdout)."""
    if bundle.selection is None:
        return None
    return TransformedDataset(bundle.selection, build_transform(config.protocol, train=False,
                                                                num_classes=bundle.num_classes),
                              config.train.seed)


def check_batch_fits(config: Config, bundle: DataBundle, world_size: int) -> None:
    """Training drops incomplete batches, so a split smaller than one global batch trains nothing."""
    needed = config.train.batch_size * world_size * config.train.grad_accum
    if bundle.train is None:
        assert bundle.unlabelled is not None
        count = len(bundle.unlabelled.images)
        if count < needed:
            per = f"train.batch_size {config.train.batch_size}"
            if world_size > 1 or config.train.grad_accum > 1:
                per += f" × {world_size} process(es) × train.grad_accum {config.train.grad_accum}"
            raise ConfigError(f"{per} is larger than the {count} unlabelled images of data.unlabelled")
        return
    if len(bundle.train) < needed:
        per = f"train.batch_size {config.train.batch_size}"
        if world_size > 1 or config.train.grad_accum > 1:
            per += f" × {world_size} process(es) × train.grad_accum {config.train.grad_accum}"
        raise ConfigError(f"{per} is larger than the {len(bundle.train)} samples of split "
                          f"{bundle.train.split!r} of dataset {bundle.name!r}")


def criterion_for(config: Config, bundle: DataBundle, device: torch.device):
    """Cross-entropy with the protocol's class weights and ignore index, in fp32."""
    if bundle.train is None and config.protocol.resolved_class_weights(bundle.name, bundle.num_classes) \
            == "median_freq":
        raise ConfigError("config key 'protocol.class_weights' is median_freq, which counts the "
                          "labels of the training split, and this run keeps none")
    weights = class_weights(bundle.name, bundle.num_classes, config.protocol, dataset=bundle.train)
    if weights is not None:
        weights = weights.to(device)
    ignore = config.protocol.ignore_index

    def criterion(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return cross_entropy_loss(logits, targets, ignore_index=ignore, weight=weights)

    return criterion


def build_network(config: Config, num_outputs: int) -> nn.Module:
    """The trainable network with fresh weights, or started from ``model.init``."""
    model = create_model(config.model.name, num_classes=num_outputs, **config.model.options)
    if config.model.init is not None:
        initialise_from(model, config.model.init)
    return model


def adopt_student_normalisation(config: Config, student: nn.Module) -> str | None:
    """Make the pipeline normalise as a pretrained student expects, and say so.

    A student whose weights were trained with a normalisation of their own (``owns_normalisation``:
    an ``hf:`` model from its folder or hub id, a ``timm:`` backbone with ``pretrained=True``) is fed
    that normalisation, whatever the protocol says; a student from random weights adopts the
    protocol's. The config is updated, so the saved ``config.yaml`` and the student's file say what
    was applied. Returns the sentence to announce, or None when nothing changed.
    """
    if not getattr(student, "owns_normalisation", False):
        return None
    own = (tuple(float(v) for v in student.input_mean), tuple(float(v) for v in student.input_std))
    protocol = config.protocol
    if protocol.input_normalization() == own:
        return None
    before = "no normalisation" if not protocol.normalize else f"mean {protocol.mean}, std {protocol.std}"
    protocol.normalize, protocol.mean, protocol.std = True, own[0], own[1]
    return (f"input normalisation: {getattr(student, 'model_name', 'the student')}'s own (mean {own[0]}, "
            f"std {own[1]}), the one its pretrained weights expect, instead of the protocol's ({before})")


def initialise_from(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a full segmentor file, or an encoder file into ``model.encoder`` (ImageNet weights)."""
    state, meta = read_safetensors(path)
    architecture = meta.get("architecture")
    encoder_only = not any(k.startswith("decode_head.") for k in state)
    if architecture:
        with contextlib.suppress(ConfigError):  # an unregistered name: judge by the keys
            encoder_only = get_entry(architecture).kind == "encoder"
    if encoder_only:
        state = {k.removeprefix("encoder."): v for k, v in state.items()}
        load_state_strict(model.encoder, state, source=f"model.init {path}")
        return
    name = getattr(model, "model_name", None)
    if architecture and name and architecture != name:
        raise CheckpointError(f"model.init {path} holds a {architecture}, but model.name is {name}")
    load_state_strict(model, state, source=f"model.init {path}")


def load_teacher(config: Config, bundle: DataBundle | None) -> nn.Module:
    """The frozen teacher from ``teacher.weights``; its outputs must match the dataset (when there
    is one: without, the dataset's classes are the teacher's)."""
    path = config.teacher.weights
    if path is None and (config.teacher.name or "").startswith("hf:"):
        # A transformers model brings its weights, classes and normalisation from its folder/hub id.
        path = config.teacher.name
        teacher = create_model(config.teacher.name)
    elif path is None:
        raise ConfigError("config key 'teacher.weights' must name the teacher's .safetensors file")
    else:
        try:
            model_file(path)
        except FileNotFoundError:
            raise ConfigError(f"teacher.weights {path} does not exist") from None
        teacher = load_model(path)
    if config.teacher.name is not None and teacher.model_name != config.teacher.name:
        raise CheckpointError(f"teacher.weights {path} holds a {teacher.model_name} but "
                              f"teacher.name is {config.teacher.name}")
    if bundle is not None and teacher.num_classes != bundle.num_outputs \
            and config.teacher.class_map is None:
        extra = " (classes + void)" if bundle.num_outputs != bundle.num_classes else ""
        raise CheckpointError(f"teacher.weights {path} predicts {teacher.num_classes} classes but "
                              f"dataset {bundle.name!r} needs {bundle.num_outputs}{extra}")
    return teacher


def build_distiller(config: Config, student: nn.Module, teacher: nn.Module | None,
                    criterion) -> Distiller:
    """The Distiller for ``distill.method`` (``none``: plain supervised training)."""
    options = dict(config.distill.options)
    if config.teacher.class_map is not None:
        options["class_map"] = list(config.teacher.class_map)
    if config.distill.pseudo_label_threshold is not None:
        options["pseudo_label_threshold"] = config.distill.pseudo_label_threshold
        options["pseudo_label_weight"] = config.distill.pseudo_label_weight
    return create_distiller(config.distill.method, teacher, student, criterion=criterion,
                            ce_weight=config.distill.ce_weight,
                            ignore_index=config.protocol.ignore_index, **options)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config key 'train.device' is {name!r} but no CUDA device is available")
    return device
