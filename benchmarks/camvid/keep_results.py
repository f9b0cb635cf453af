"""Copy what a finished CamVid table run should keep into the repository: every run's
``config.yaml``, ``metrics.jsonl`` and ``summary.json`` and the console logs, then write the
report again from those copies. Weights, checkpoints, TensorBoard events and dataset images stay
behind: the kept report has no sample predictions (``--samples 0``), which would show CamVid
frames.

    python benchmarks/camvid/keep_results.py runs/camvid_table --data /path/to/CamVid \\
        --into benchmarks/camvid/results

Machine-specific paths in the kept text files are replaced by the placeholders the docs use:
the dataset root by ``/path/to/CamVid``, the folder holding the table's output by ``runs/`` and
the repository's own folder by nothing (preset paths become ``configs/camvid/...``), so every kept
config reproduces its row with ``--data`` and the same folder layout.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from run_table import STUDENT_METHODS

REPOSITORY = Path(__file__).resolve().parents[2]
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json")
TEXT_SUFFIXES = {".yaml", ".jsonl", ".json", ".log", ".md", ".html"}


def anonymise(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        text = text.replace(old, new)
    return text


def copy(source: Path, target: Path, replacements: dict[str, str]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix in TEXT_SUFFIXES:
        target.write_text(anonymise(source.read_text(encoding="utf-8"), replacements), encoding="utf-8")
    else:
        shutil.copyfile(source, target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", type=Path, help="the --output folder of run_table.py")
    parser.add_argument("--data", required=True, help="the CamVid root the table was trained on")
    parser.add_argument("--into", type=Path, required=True, help="folder to write (replaced if it exists)")
    parser.add_argument("--console", type=Path,
                        help="run_table.py's own console output, kept as run_table.log")
    args = parser.parse_args()

    table = args.table.resolve()
    order = ["teacher_b2", "student_b0", *(f"{m}_b2-b0" for m in STUDENT_METHODS)]
    runs = sorted((p for p in table.iterdir() if all((p / f).is_file() for f in RUN_FILES[:2])),
                  key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name))
    if not runs:
        sys.exit(f"{table} holds no run folders (config.yaml and metrics.jsonl)")
    data = "/path/to/CamVid"
    replacements = {str(Path(args.data).resolve()): data, args.data.rstrip("/"): data,
                    f"{table.parent}/": "runs/", f"{REPOSITORY}/": "", sys.executable: "python"}

    staging = args.into.with_name(args.into.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for run in runs:
        for name in RUN_FILES:
            if (run / name).is_file():
                copy(run / name, staging / run.name / name, replacements)
    for log in sorted((table / "logs").glob("*.log")):
        copy(log, staging / "logs" / log.name, replacements)
    if args.console:
        copy(args.console, staging / "run_table.log", replacements)
    subprocess.run([sys.executable, "-m", "transkd", "report", *(run.name for run in runs),
                    "--samples", "0", "--output", "report"], cwd=staging, check=True)
    (staging / "report" / "report.html").unlink()  # the same report again, figures embedded
    shutil.rmtree(args.into, ignore_errors=True)
    staging.rename(args.into)
    print(f"kept {len(runs)} runs and the report in {args.into}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
