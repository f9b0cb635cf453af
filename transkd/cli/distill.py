"""``transkd distill``: train a student with a frozen teacher (TransKD or a baseline method)."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from ._common import config_from_args, run_training
from ._options import add_config_arguments, add_unlabelled, yaml_string


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "distill", help="distil a frozen teacher into a student (TransKD, KD, CWD, ...)",
        description="Distil a teacher (teacher.weights, a transkd .safetensors) into a student with "
                    "distill.method, on a labelled dataset, images without labels (--unlabelled), or "
                    "both. Multi-GPU: torchrun --nproc_per_node N -m transkd distill ...")
    add_config_arguments(parser)
    add_unlabelled(parser)
    parser.add_argument("--teacher", metavar="WEIGHTS",
                        help="teacher .safetensors (shortcut for teacher.weights)")
    parser.add_argument("--method", help="distillation method (shortcut for distill.method)")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    extra = []
    if args.teacher is not None:
        extra.append(f"teacher.weights={yaml_string(args.teacher)}")
    if args.method is not None:
        extra.append(f"distill.method={yaml_string(args.method)}")
    config = config_from_args(args, extra)
    if not config.method_names:
        raise ConfigError("transkd distill needs a distillation method: set distill.method "
                          "(e.g. --method transkd_base); use transkd train for plain training")
    return run_training(config, args.resume, "distill", progress=not args.no_progress)
