"""``transkd demo``: the whole job on synthetic data in minutes on a CPU."""

from __future__ import annotations

import argparse
import shlex

from ..recipes.demo import DemoInterrupted, results_table, run_demo
from ._common import say

DEFAULT_OUTPUT = "runs/demo"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo", help="train a teacher, a plain student and TransKD students on synthetic data",
        description="No data needed: trains a SegFormer-B1 teacher, a plain SegFormer-B0 student and "
                    "TransKD students on synthetic street scenes, then prints a table (val mIoU, "
                    "params, MACs, train time) and writes curves and sample predictions. Run again "
                    "with the same options, an interrupted demo continues where it stopped.")
    parser.add_argument("--output", "-o", default=DEFAULT_OUTPUT, metavar="DIR",
                        help="demo folder (default runs/demo; new, empty, or a demo to continue)")
    parser.add_argument("--minutes", type=float, default=5.0,
                        help="length of the demo in minutes of two idle CPU cores; training lengths "
                             "scale with it (default 5; a busy machine takes longer)")
    parser.add_argument("--methods",
                        help="comma-separated distillation methods (default: the three TransKD "
                             "variants; with --tiny, transkd_base)")
    parser.add_argument("--tiny", action="store_true",
                        help="a seconds-long smoke run: one step per network at 32x64")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or lines")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:

    methods = None if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
    say(f"demo folder: {args.output}")
    try:
        summary = run_demo(args.output, minutes=args.minutes, tiny=args.tiny, methods=methods,
                           seed=args.seed, report=say, progress=not args.no_progress)
    except (DemoInterrupted, KeyboardInterrupt) as exc:
        reason = f" {exc}" if str(exc) else ""
        say(f"interrupted{reason}; run `{again(args)}` again to continue")
        return 130
    output = args.output
    folders = ", ".join(f"{output}/{row['run']}" for row in summary["rows"])
    say()
    say(results_table(summary))
    say()
    say(f"table: {output}/results.md (and results.json)")
    say(f"curves: {summary['curves']}; sample predictions: {summary['predictions']}/grid.png "
        f"(colour legend: {summary['predictions']}/legend.png)")
    say(f"per-run folders (config.yaml, metrics.jsonl, checkpoints, best/ and last/ networks): "
        f"{folders}")
    return 0


def again(args: argparse.Namespace) -> str:
    """The command that continues this demo: the same options."""
    words = ["transkd", "demo"]
    if args.tiny:
        words.append("--tiny")
    if args.minutes != 5.0:
        words += ["--minutes", f"{args.minutes:g}"]
    if args.methods is not None:
        words += ["--methods", args.methods]
    if args.seed != 0:
        words += ["--seed", str(args.seed)]
    if args.output != DEFAULT_OUTPUT:
        words += ["--output", args.output]
    return shlex.join(words)
