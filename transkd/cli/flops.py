"""``transkd flops``: parameters, MACs and FLOPs of a model, each named with its convention."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import ConfigError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "flops", help="parameters, MACs (paper convention) and FLOPs of a model",
        description="Count parameters, MACs in the TransKD paper's convention (mmcv counter: "
                    "conv/linear/norm layers, attention products not counted) and FLOPs including "
                    "attention (torch flop_counter) on one random input. With --method, also the "
                    "training-time sizes of the student plus its distillation modules.")
    parser.add_argument("model", help="segmentation model name, e.g. segformer_b0")
    parser.add_argument("--num-classes", type=int, default=20, metavar="K",
                        help="output classes (default 20: 19 Cityscapes classes + void, as in the paper)")
    parser.add_argument("--input-size", type=int, nargs=2, default=(512, 1024), metavar=("H", "W"),
                        help="input height and width (default 512 1024)")
    parser.add_argument("--teacher", metavar="NAME", help="teacher model for --method")
    parser.add_argument("--method", metavar="M",
                        help="distillation method (e.g. transkd_base): add the training-time rows")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..profile import profile_model

    if args.num_classes < 1:
        raise ConfigError(f"--num-classes must be at least 1, got {args.num_classes}")
    if any(v < 1 for v in args.input_size):
        raise ConfigError(f"--input-size must be two positive integers, got "
                          f"{args.input_size[0]} {args.input_size[1]}")
    if args.teacher and not args.method:
        raise ConfigError("--teacher is only used with --method; name a distillation method too")
    result = profile_model(args.model, args.num_classes, tuple(args.input_size))
    if args.method:
        result["training"] = _training_sizes(args)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


def _training_sizes(args: argparse.Namespace) -> dict[str, Any]:
    from .. import create_distiller, create_model
    from ..profile import profile_distiller

    teacher = create_model(args.teacher, num_classes=args.num_classes) if args.teacher else None
    student = create_model(args.model, num_classes=args.num_classes)
    distiller = create_distiller(args.method, teacher, student)
    sizes = profile_distiller(distiller, tuple(args.input_size))
    sizes["teacher"] = args.teacher
    return sizes


def _millions(value: int) -> str:
    return f"{value / 1e6:.2f} M"


def _billions(value: int) -> str:
    return f"{value / 1e9:.2f} G"


def format_report(result: dict[str, Any]) -> str:
    """A small aligned table: one number per row, each with its convention."""
    shape = "×".join(map(str, result["input_size"]))
    rows = [
        ("params", _millions(result["params"]), f"{result['params']:,}"),
        ("MACs   conv+linear, paper convention (mmcv counter)", _billions(result["macs_conv_linear"]),
         "attention products not counted"),
        ("MACs   incl. attention (torch flop_counter / 2)", _billions(result["macs_total"]), ""),
        ("FLOPs  incl. attention (torch flop_counter)", _billions(result["flops_total"]),
         "2 FLOPs per MAC"),
    ]
    lines = [f"{result['model']} · {result['num_classes']} classes · input {shape}"]
    training = result.get("training")
    if training:
        rows += [
            ("params training: student + adapters", _millions(training["params_training"]),
             f"adapters {_millions(training['params_adapters'])}"),
            ("MACs   training: student + adapters, paper convention",
             _billions(training["macs_conv_linear_training"]),
             f"adapters {_billions(training['macs_conv_linear_adapters'])}"),
        ]
    width = max(len(label) for label, _, _ in rows)
    value_width = max(len(value) for _, value, _ in rows)
    for label, value, note in rows:
        lines.append(f"  {label:<{width}}  {value:>{value_width}}  {note}".rstrip())
    if training:
        teacher = f" (teacher {training['teacher']} not counted)" if training.get("teacher") else ""
        lines.append(f"Training rows count the training-only modules of {training['method']}{teacher};")
        lines.append(f"the deployed student stays at {_millions(result['params'])} / "
                     f"{_billions(result['macs_conv_linear'])}.")
    return "\n".join(lines)
