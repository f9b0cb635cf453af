"""CamVid reproduction of TransKD's effect, run entirely with the tool's own CLI and presets.

Trains, on one machine and with the same seed, data and schedule:
the MiT-B2 teacher from scratch; the MiT-B0 student from scratch (``none``); and B0 students
distilled with kd, cwd, review_kd, transkd_base, transkd_gl and transkd_ea. Then writes the
comparison report (mIoU, per-class IoU, share of the teacher–student gap closed, params, MACs,
wall time) with ``transkd report``.

    python benchmarks/camvid/run_table.py --data /path/to/CamVid --output runs/camvid_table

Presets: ``configs/camvid/*_cpu40e.yaml`` (192×256 inputs, 40 epochs, batch 8). The resolution
and schedule are chosen so the whole table fits a CPU budget; ``--epochs`` shortens it further
(every run gets the same value) and ``--set`` passes extra overrides to every run. Each command is
printed before it runs so every row can be reproduced by hand.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "camvid"
STUDENT_METHODS = ("kd", "cwd", "review_kd", "transkd_base", "transkd_gl", "transkd_ea")


def run(command: list[str]) -> float:
    print("$ " + shlex.join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CamVid root (train/, trainannot/, val/, valannot/)")
    parser.add_argument("--output", default="runs/camvid_table", help="folder for every run and the report")
    parser.add_argument("--epochs", type=int, default=None, help="override the presets' 40 epochs")
    parser.add_argument("--methods", default=",".join(STUDENT_METHODS),
                        help="comma-separated distillation methods")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every run (repeatable)")
    args = parser.parse_args()

    out = Path(args.output)
    overrides = [*args.set] + ([f"train.epochs={args.epochs}"] if args.epochs else [])
    sets = [item for o in overrides for item in ("--set", o)]
    tool = [sys.executable, "-m", "transkd"]
    common = ["--data", args.data, *sets]

    teacher_dir = out / "teacher_b2"
    run([*tool, "train", "--config", str(PRESETS / "teacher_b2_cpu40e.yaml"),
         "--output", str(teacher_dir), *common])
    teacher = teacher_dir / "best" / "student.safetensors"
    run([*tool, "train", "--config", str(PRESETS / "student_b0_cpu40e.yaml"),
         "--output", str(out / "student_b0"), *common])
    runs = [teacher_dir, out / "student_b0"]
    for method in [m for m in args.methods.split(",") if m]:
        run_dir = out / f"{method}_b2-b0"
        run([*tool, "distill", "--config", str(PRESETS / f"{method}_b2-b0_cpu40e.yaml"),
             "--teacher", str(teacher), "--output", str(run_dir), *common])
        runs.append(run_dir)
    run([*tool, "report", *map(str, runs), "--output", str(out / "report")])
    print(f"report: {out / 'report' / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
