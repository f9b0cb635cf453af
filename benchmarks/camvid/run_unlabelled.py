"""CamVid with a quarter of the training labels: does distilling on the unlabelled rest help?

Four runs, one seed, the CamVid presets (``configs/camvid/*_cpu40e.yaml``, 192×256 inputs,
batch 8), all with the same teacher (a ``teacher_b2`` run of ``run_table.py``):

1. ``student_b0_quarter``: the plain B0 student on the labelled quarter alone;
2. ``transkd_base_quarter``: TransKD-Base on the labelled quarter;
3. ``transkd_base_quarter_unlabelled``: TransKD-Base on the labelled quarter, plus the other
   three quarters as unlabelled images (``data.unlabelled: rest``, one unlabelled image per
   labelled one in every batch);
4. ``transkd_base_all``: TransKD-Base with every label (the preset as it is).

The quarter is ``data.labelled_fraction: 0.25``, a seeded choice (``data.labelled_seed``, default
``train.seed``), the same images in runs 1–3. Every run gets the same budget of optimiser steps:
``--epochs`` (25, as the table in docs/results.md) over the full split, i.e. 25 × 45 steps; an
epoch of the labelled quarter is about a quarter as long, so runs 1–3 train proportionally more
epochs (the paper schedule decays per epoch over whatever length the run has). Run 3 reads 16
images a step (8 labelled + 8 unlabelled), so it takes about twice as long per step.

    python benchmarks/camvid/run_unlabelled.py --data /path/to/CamVid \\
        --teacher runs/camvid_table/teacher_b2/best/model.safetensors --output runs/camvid_quarter \\
        --threads 2 --jobs 2

Each command is printed before it runs; every run resumes from its last checkpoint, so the same
command completes an interrupted comparison; ``transkd report`` then compares the four runs.
``--set`` passes extra overrides to every run (e.g. a few iterations to check that all start).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from run_table import PRESETS, run, run_pool

from transkd.data import build_dataset

FRACTION = 0.25


def quarter_epochs(split_size: int, batch_size: int, epochs: int, fraction: float) -> int:
    """Epochs of the labelled fraction that give as many optimiser steps as ``epochs`` of the
    whole split (batches drop their remainder, as training does)."""
    full_steps = epochs * (split_size // batch_size)
    kept = min(split_size, max(1, round(fraction * split_size)))
    return max(1, math.ceil(full_steps / max(1, kept // batch_size)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CamVid root (train/, trainannot/, val/, valannot/)")
    parser.add_argument("--teacher", required=True, help="the MiT-B2 teacher's .safetensors (or run folder)")
    parser.add_argument("--output", default="runs/camvid_quarter", help="folder for every run and the report")
    parser.add_argument("--epochs", type=int, default=25,
                        help="budget: epochs over the whole training split (default 25)")
    parser.add_argument("--fraction", type=float, default=FRACTION,
                        help="fraction of the training labels kept (default 0.25)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every run (repeatable)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads in all")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (default 1)")
    args = parser.parse_args()
    if args.jobs < 1 or args.threads < 1 or args.epochs < 1 or not 0 < args.fraction < 1:
        parser.error("--jobs, --threads and --epochs must be at least 1 and --fraction in (0, 1)")

    split_size = len(build_dataset("camvid", args.data, split="train"))
    batch_size = 8  # the presets' train.batch_size
    few = quarter_epochs(split_size, batch_size, args.epochs, args.fraction)
    out = Path(args.output)
    tool = [sys.executable, "-m", "transkd"]
    extra = [item for o in args.set for item in ("--set", o)]

    def sets(*overrides: str) -> list[str]:
        return [item for o in overrides for item in ("--set", o)]

    quarter = (f"data.labelled_fraction={args.fraction}", f"train.epochs={few}")
    distill = [*tool, "distill", "--config", str(PRESETS / "transkd_base_b2-b0_cpu40e.yaml"),
               "--teacher", str(args.teacher), "--data", args.data, "--resume", "auto"]
    runs = [
        ("student_b0_quarter", [*tool, "train", "--config", str(PRESETS / "student_b0_cpu40e.yaml"),
                                "--data", args.data, "--resume", "auto", *sets(*quarter)]),
        ("transkd_base_quarter", [*distill, *sets(*quarter)]),
        ("transkd_base_quarter_unlabelled", [*distill, *sets(*quarter, "data.unlabelled=rest",
                                                             "data.unlabelled_ratio=1")]),
        ("transkd_base_all", [*distill, *sets(f"train.epochs={args.epochs}")]),
    ]
    commands = [(name, [*command, "--output", str(out / name), *extra]) for name, command in runs]
    print(f"budget: {args.epochs} epochs of the {split_size}-image split = "
          f"{args.epochs * (split_size // batch_size)} steps; with {args.fraction:g} of the labels: "
          f"{few} epochs", flush=True)
    run_pool(commands[::-1], args.jobs, max(1, args.threads // args.jobs), out / "logs")
    run([*tool, "report", *(str(out / name) for name, _ in commands), "--output",
         str(out / "report")], args.threads)
    print(f"report: {out / 'report' / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
