"""``transkd sweep``: a teacher, several methods or configs × seeds, one report with intervals."""

from __future__ import annotations

import argparse

from ..recipes.sweep import load_spec, run_sweep
from ._common import say
from ._options import add_sweep_arguments, yaml_string


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "sweep", help="run methods × seeds against one teacher, resumably, and report them",
        description="Run a sweep spec: its teacher (trained first, or given), then every student "
                    "run once per seed (sequentially or --jobs at a time), each resuming where an "
                    "earlier sitting stopped, then a report with mean ± std over seeds and "
                    "bootstrap intervals. Finished runs are skipped, so the same command completes "
                    "an interrupted sweep.")
    add_sweep_arguments(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    overrides = args.overrides + ([f"data.root={yaml_string(args.data)}"] if args.data else [])
    spec = load_spec(args.spec, seeds=args.seeds, overrides=overrides, output=args.output,
                     teacher_weights=args.teacher, jobs=args.jobs, threads=args.threads)
    result = run_sweep(spec, announce=say)
    say(f"ran {len(result.ran)} run(s), skipped {len(result.skipped)} finished earlier; runs in "
        f"{result.output}")
    say(f"report: {result.report}")
    return 0
