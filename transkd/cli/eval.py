"""``transkd eval``: score saved weights on a dataset split (mIoU, per-class IoU, pixel accuracy)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import CheckpointError, ConfigError
from ._common import _quoted, add_config_arguments, class_table, config_from_args, context_line, percent, say


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "eval", help="evaluate saved weights on a dataset split",
        description="Evaluate a .safetensors model (or a run folder: its config.yaml and "
                    "best/student.safetensors) on a split. The data pipeline and inference come "
                    "from the config (the run's own config for a run folder).")
    parser.add_argument("weights", metavar="WEIGHTS|RUN",
                        help="a transkd .safetensors file or a run folder")
    add_config_arguments(parser, resume=False)
    parser.add_argument("--dataset", help="dataset name (shortcut for data.name)")
    parser.add_argument("--split", help="split to evaluate (default: data.val_split)")
    parser.add_argument("--last", action="store_true",
                        help="with a run folder: evaluate last/ instead of best/")
    parser.add_argument("--json", action="store_true",
                        help="print the result as JSON (and no progress on standard output)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    parser.set_defaults(run=run)
    return parser


def locate(target: str, last: bool) -> tuple[Path, Path | None]:
    """(weights file, run config or None) for a file or a run folder."""
    path = Path(target)
    if path.is_dir():
        weights = path / ("last" if last else "best") / "student.safetensors"
        if not weights.is_file():
            raise CheckpointError(f"run folder {path} has no {weights.relative_to(path)}")
        config = path / "config.yaml"
        return weights, config if config.is_file() else None
    if not path.is_file():
        raise CheckpointError(f"weights {path} do not exist")
    return path, None


def run(args: argparse.Namespace) -> int:
    import torch

    from ..config import read_yaml
    from ..engine import build
    from ..engine.evaluate import InferenceOptions, evaluate
    from ..engine.run import protocol_description
    from ..weights.io import load_model, read_safetensors

    weights, run_config = locate(args.weights, args.last)
    _, meta = read_safetensors(weights)
    base = None
    if args.config is None:
        if run_config is not None:
            base = read_yaml(run_config)
        else:  # a bare weights file: the dataset and pipeline it was trained with
            base = {}
            if meta.get("dataset"):
                base["data"] = {"name": meta["dataset"]}
            if isinstance(meta.get("protocol_options"), dict):
                base["protocol"] = meta["protocol_options"]
    extra = [f"data.name={_quoted(args.dataset)}"] if args.dataset is not None else []
    config = config_from_args(args, extra, base=base)
    split = args.split or config.data.val_split
    bundle = build.open_datasets(config, train=False, val_split=split)
    model = load_model(weights)
    if model.num_classes != bundle.num_outputs:
        raise ConfigError(f"{weights} predicts {model.num_classes} classes but dataset "
                          f"{bundle.name!r} needs {bundle.num_outputs}")
    device = build.resolve_device(config.train.device)
    _, val_set = build.transformed(bundle, config)
    loader = torch.utils.data.DataLoader(val_set, batch_size=config.eval.batch_size,
                                         num_workers=config.train.num_workers)
    inference = InferenceOptions(mode=config.eval.mode, crop=config.eval.crop,
                                 stride=config.eval.stride, scales=config.eval.scales,
                                 flip=config.eval.flip)
    metrics = evaluate(model, loader, bundle.num_classes, config.protocol.ignore_index,
                       inference=inference, device=device, progress=not (args.no_progress or args.json))
    description = protocol_description(config)
    if args.json:
        record = {
            "weights": str(weights), "model": model.model_name, "dataset": bundle.name,
            "split": split, "images": len(val_set), **description,
            "miou": metrics["miou"], "acc": metrics["acc"], "macc": metrics["macc"],
            "iou": dict(zip(bundle.class_names, metrics["iou"])),
        }
        say(json.dumps(_nan_to_none(record), indent=2))
        return 0
    say(f"{weights} ({model.model_name}) on {context_line(description, bundle.name, split)}, "
        f"{len(val_set)} images")
    say(f"mIoU {percent(metrics['miou'])}%  pixel accuracy {percent(metrics['acc'])}%  "
        f"mean class accuracy {percent(metrics['macc'])}%")
    say(class_table(bundle.class_names, metrics["iou"], metrics.get("class_acc")))
    return 0


def _nan_to_none(value):
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value
