"""``transkd report``: REPORT.md and a self-contained report.html about one or several runs."""

from __future__ import annotations

import argparse

from ..report import write_report
from ._common import say
from ._options import add_baseline, add_output


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "report", help="write a Markdown + HTML report of runs: table, curves, predictions",
        description="Read run folders (or a folder of runs such as a demo folder) and write "
                    "REPORT.md and report.html (one file, figures embedded): a comparison table "
                    "(best val mIoU, share of the teacher-student gap closed, params, MACs, wall "
                    "time), mIoU and loss curves, per-class IoU, sample predictions of each run's "
                    "best network and each resolved config. Nothing is retrained.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run folders written by transkd train/distill, or a folder holding runs")
    add_output(parser, "DIR", "folder for the report (default: a folder of runs itself, else "
                              "report/ in the folder holding the runs)")
    parser.add_argument("--samples", type=int, default=3, metavar="N",
                        help="validation images in the sample predictions (default 3; 0: none)")
    add_baseline(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    result = write_report(args.runs, output=args.output, samples=args.samples, announce=say,
                          baseline=args.baseline)
    for note in result.notes:
        say(f"note: {note}")
    say(f"report of {len(result.runs)} run(s) ({', '.join(result.runs)}): {result.markdown} and "
        f"{result.html} (figures in {result.figures})")
    return 0
