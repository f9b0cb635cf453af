"""``transkd demo``: the whole job on synthetic data in about five minutes on a CPU."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from ._common import say


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo", help="train a teacher, a plain student and TransKD students on synthetic data",
        description="No data needed: trains a SegFormer-B1 teacher, a plain SegFormer-B0 student and "
                    "TransKD students on synthetic street scenes, then prints a table (val mIoU, "
                    "params, MACs, train time) and writes curves and sample predictions.")
    parser.add_argument("--output", default="runs/demo", metavar="DIR",
                        help="demo folder (default runs/demo; must not hold a previous demo)")
    parser.add_argument("--minutes", type=float, default=5.0,
                        help="time budget on 2 CPU cores; training lengths scale with it (default 5)")
    parser.add_argument("--methods", default="transkd_base,transkd_gl,transkd_ea",
                        help="comma-separated distillation methods (default: the three TransKD variants)")
    parser.add_argument("--tiny", action="store_true",
                        help="a seconds-long smoke run at 32x64 with a handful of images")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..distill import get_method
    from ..engine.demo import results_table, run_demo
    from ..engine.run import check_output_dir

    if not args.minutes > 0:
        raise ConfigError(f"--minutes must be positive, got {args.minutes}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for method in methods:
        get_method(method)
    output = Path(args.output)
    check_output_dir(output, resuming=False)
    if output.is_dir() and any(output.iterdir()):
        raise ConfigError(f"demo folder {output} is not empty; choose another with --output")
    say(f"demo folder: {output}")
    summary = run_demo(output, minutes=args.minutes, tiny=args.tiny, methods=methods, seed=args.seed,
                       report=say)
    say()
    say(results_table(summary))
    say()
    say(f"table: {output / 'results.md'} (and results.json)")
    say(f"curves: {summary['curves']}; sample predictions: {summary['predictions']}/grid.png")
    say(f"per-run folders (config.yaml, metrics.jsonl, checkpoints, student.safetensors): "
        f"{', '.join(str(output / row['run']) for row in summary['rows'])}")
    return 0
