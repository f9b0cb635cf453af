"""``transkd flops``: parameters, MACs and FLOPs of a model, each named with its convention."""

from __future__ import annotations

import argparse
import json

from ..jsonsafe import json_safe
from ..profile import DEFAULT_NUM_CLASSES
from ..profile_report import format_profile, profile_target
from ._common import say
from ._options import DEFAULT_INPUT_SIZE, add_input_size, add_json, add_model, add_num_classes


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "flops", help="parameters, MACs (paper convention) and FLOPs of a model",
        description="Count parameters, MACs in the TransKD paper's convention (mmcv counter: "
                    "conv/linear/norm layers, attention products not counted) and FLOPs including "
                    "attention (torch flop_counter) on one random input. With --method, also the "
                    "training-time sizes of the student plus its distillation modules.")
    add_model(parser, by_name=True, saved=False)
    add_num_classes(parser, f"output classes (default {DEFAULT_NUM_CLASSES}: 19 Cityscapes classes + "
                            "void, as in the paper)", default=DEFAULT_NUM_CLASSES)
    add_input_size(parser, "input height and width (default 512 1024)", default=DEFAULT_INPUT_SIZE)
    parser.add_argument("--teacher", metavar="NAME", help="teacher model for --method")
    parser.add_argument("--method", metavar="M",
                        help="distillation method (e.g. transkd_base): add the training-time rows")
    add_json(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    result = profile_target(args.model, args.num_classes, tuple(args.input_size), teacher=args.teacher,
                            method=args.method)
    say(json.dumps(json_safe(result), indent=2) if args.json else format_profile(result))
    return 0
