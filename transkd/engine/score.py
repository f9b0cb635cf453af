"""Score a saved network on a dataset split: what ``transkd eval`` runs, callable from Python.

The data pipeline and inference come from a config: the given one, else the run folder's own
``config.yaml``, else (a bare weights file) defaults with the dataset and protocol the file
records, so a number is always measured the way the network was trained to be measured.

An ``.onnx`` file written by ``transkd export`` (any precision) is scored the same way: its
metadata carries the dataset, protocol, classes and normalisation of the network it came from,
and onnxruntime runs it (:class:`transkd.models.onnx_graph.OnnxSegmentor`), so the mIoU of every
exported variant is measured with the same pipeline and metric as the original.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import Config, load_config, read_yaml
from ..data import build_dataset
from ..data.protocols import TransformedDataset, build_transform
from ..errors import ConfigError
from ..inference import InferenceOptions
from ..jsonsafe import json_safe
from ..models.onnx_graph import OnnxSegmentor, is_onnx_file, onnx_metadata
from ..weights.io import load_model, model_file, read_metadata
from . import build
from .evaluate import evaluate
from .run import protocol_description


@dataclass
class CheckpointScore:
    """The metrics of one network on one split, and what they mean."""

    weights: Path
    model: str
    dataset: str
    split: str
    images: int
    class_names: tuple[str, ...]
    description: dict[str, Any]
    metrics: dict[str, Any]

    def record(self) -> dict[str, Any]:
        """The result as JSON-ready values (a missing score is null)."""
        return json_safe({
            "weights": str(self.weights), "model": self.model, "dataset": self.dataset,
            "split": self.split, "images": self.images, **self.description,
            "miou": self.metrics["miou"], "acc": self.metrics["acc"], "macc": self.metrics["macc"],
            "iou": dict(zip(self.class_names, self.metrics["iou"])),
        })


def checkpoint_config(weights: Path, run_folder: Path | None, config_file: str | os.PathLike | None,
                      overrides: Sequence[str]) -> Config:
    """The config to evaluate ``weights`` with: ``config_file``, else the run's, else what the
    weights record; then ``overrides``."""
    base: dict[str, Any] | None = None
    if config_file is None:
        run_config = run_folder / "config.yaml" if run_folder is not None else None
        if run_config is not None and run_config.is_file():
            base = read_yaml(run_config)
        else:  # a bare weights file: the dataset and pipeline it was trained with
            meta = (onnx_metadata(weights) if is_onnx_file(weights) else read_metadata(weights)) or {}
            base = {}
            if meta.get("dataset"):
                base["data"] = {"name": meta["dataset"]}
            if isinstance(meta.get("protocol_options"), dict):
                base["protocol"] = meta["protocol_options"]
    return load_config(config_file, overrides, base=base)


def _network_and_config(target: str | os.PathLike, config_file: str | os.PathLike | None,
                        overrides: Sequence[str], last: bool, threads: int | None = None,
                        load: bool = True) -> tuple[Path, Config, torch.nn.Module | None]:
    path = Path(target)
    run_folder = path if path.is_dir() else None
    weights = model_file(path, last)
    config = checkpoint_config(weights, run_folder, config_file, overrides)
    if not load:
        return weights, config, None
    model = OnnxSegmentor(weights, threads=threads) if is_onnx_file(weights) else load_model(weights)
    return weights, config, model


def evaluate_checkpoint(target: str | os.PathLike, config_file: str | os.PathLike | None = None,
                        overrides: Sequence[str] = (), split: str | None = None, last: bool = False,
                        progress: bool = False, threads: int | None = None,
                        model: torch.nn.Module | None = None) -> CheckpointScore:
    """Evaluate a ``.safetensors`` file, a run folder's best (``last``: last) network or an
    exported ``.onnx`` file on ``split`` (default ``data.val_split``); ``overrides`` are
    ``key=value`` config overrides. ``threads``: onnxruntime's intra-op threads for an ONNX file.
    ``model``: score this network (e.g. a ``torch.compile`` of the file's) with the file's config."""
    weights, config, loaded = _network_and_config(target, config_file, overrides, last, threads,
                                                  load=model is None)
    model = model if model is not None else loaded
    split = split or config.data.val_split
    bundle = build.open_datasets(config, train=False, val_split=split)
    if model.num_classes != bundle.num_outputs:
        raise ConfigError(f"{weights} predicts {model.num_classes} classes but dataset "
                          f"{bundle.name!r} needs {bundle.num_outputs}")
    device = torch.device("cpu") if is_onnx_file(weights) else build.resolve_device(config.train.device)
    _, val_set = build.transformed(bundle, config)
    loader = torch.utils.data.DataLoader(val_set, batch_size=config.eval.batch_size,
                                         num_workers=config.train.num_workers,
                                         pin_memory=device.type == "cuda")  # non-blocking copies
    inference = InferenceOptions(mode=config.eval.mode, crop=config.eval.crop,
                                 stride=config.eval.stride, scales=config.eval.scales,
                                 flip=config.eval.flip)
    metrics = evaluate(model, loader, bundle.num_classes, config.protocol.ignore_index,
                       inference=inference, device=device, progress=progress,
                       void_false_negative=config.protocol.void_prediction_false_negative)
    return CheckpointScore(weights=weights, model=model.model_name, dataset=bundle.name, split=split,
                           images=len(val_set), class_names=tuple(bundle.class_names),
                           description=protocol_description(config), metrics=metrics)


def evaluation_images(target: str | os.PathLike, count: int, config_file: str | os.PathLike | None = None,
                      overrides: Sequence[str] = (), split: str | None = None,
                      last: bool = False) -> list[torch.Tensor]:
    """``count`` images (each 1×3×H×W, normalised) of ``split`` (default ``data.train_split``: not
    the split the network is scored on), spread evenly over it, through the network's own
    evaluation transforms: the calibration set of a static INT8 export."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"--calibration-images must be a positive integer, got {count!r}")
    weights, config, _ = _network_and_config(target, config_file, overrides, last, load=False)
    data = config.data
    split = split or data.train_split
    options = data.options if split == data.train_split else {**data.options, **data.val_options}
    dataset = build_dataset(data.name, data.root, split=split, **options)
    if len(dataset) == 0:
        raise ConfigError(f"split {split!r} of dataset {data.name!r} holds no images to calibrate on")
    dataset.validate()
    images = TransformedDataset(dataset, build_transform(config.protocol, train=False,
                                                         num_classes=dataset.num_classes), config.train.seed)
    total = len(images)
    picks = sorted({int(i * total / min(count, total)) for i in range(min(count, total))})
    return [images[i]["image"].unsqueeze(0).float() for i in picks]
