"""``transkd eval``: score saved weights on a dataset split (mIoU, per-class IoU, pixel accuracy)."""

from __future__ import annotations

import argparse
import json

from ..engine.score import evaluate_checkpoint
from ._common import class_table, context_line, percent, say
from ._options import (
    add_config_arguments,
    add_json,
    add_model,
    add_no_progress,
    config_overrides,
    yaml_string,
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "eval", help="evaluate saved weights on a dataset split",
        description="Evaluate a .safetensors model, a run folder (its config.yaml and best "
                    "network) or an .onnx file written by 'transkd export' (any precision; run by "
                    "onnxruntime, dataset and normalisation from its metadata) on a split. The data "
                    "pipeline and inference come from the config (the run's own config for a run "
                    "folder).")
    add_model(parser)
    add_config_arguments(parser, resume=False)
    parser.add_argument("--dataset", help="dataset name (shortcut for data.name)")
    parser.add_argument("--split", help="split to evaluate (default: data.val_split)")
    add_json(parser)
    add_no_progress(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    extra = [f"data.name={yaml_string(args.dataset)}"] if args.dataset is not None else []
    score = evaluate_checkpoint(args.model, config_file=args.config,
                                overrides=config_overrides(args, extra), split=args.split,
                                last=args.last, progress=not (args.no_progress or args.json))
    if args.json:
        say(json.dumps(score.record(), indent=2))
        return 0
    say(f"{score.weights} ({score.model}) on "
        f"{context_line(score.description, score.dataset, score.split)}, {score.images} images")
    metrics = score.metrics
    say(f"mIoU {percent(metrics['miou'])}%  pixel accuracy {percent(metrics['acc'])}%  "
        f"mean class accuracy {percent(metrics['macc'])}%")
    say(class_table(score.class_names, metrics["iou"], metrics.get("class_acc")))
    return 0
