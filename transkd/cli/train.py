"""``transkd train``: train a network on its own (a teacher, or the plain student baseline)."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from ._common import config_from_args, run_training
from ._options import add_config_arguments


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train", help="train a teacher or a plain student (cross-entropy only)",
        description="Train one network with cross-entropy (method none): a teacher to distil from, "
                    "or the from-scratch student baseline. Multi-GPU: torchrun --nproc_per_node N "
                    "-m transkd train ...")
    add_config_arguments(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if config.method_names:
        raise ConfigError(f"transkd train trains without a teacher, but distill.method is "
                          f"{config.distill.method!r}; use transkd distill")
    return run_training(config, args.resume, "train", progress=not args.no_progress)
