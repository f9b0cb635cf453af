"""CamVid reproduction of TransKD's effect, run entirely with the tool's own CLI and presets.

Trains, on one machine and with the same seed, data and schedule:
the MiT-B2 teacher from scratch; the MiT-B0 student from scratch (``none``); and B0 students
distilled with kd, cwd, review_kd, transkd_base, transkd_gl and transkd_ea. Then writes the
comparison report (mIoU, per-class IoU, share of the teacher–student gap closed, params, MACs,
wall time) with ``transkd report``.

    python benchmarks/camvid/run_table.py --data /path/to/CamVid --output runs/camvid_table \
        --epochs 25 --threads 2 --jobs 2

``--student-model timm:resnet18 --methods kd,cwd,csf_only`` runs the same teacher into another
family of student (a CNN here) with the methods whose needs it meets; ``--teacher-model
timm:convnext_tiny --methods kd,csf_only`` trains a teacher of another family (same preset,
schedule and budget as the B2 teacher) and distils it into the B0 student.

Presets: ``configs/camvid/*_cpu40e.yaml`` (192×256 inputs, 40 epochs, batch 8). The resolution
and schedule are chosen so the whole table fits a CPU budget; ``--epochs`` shortens it further
(every run gets the same value; the table in docs/results.md used 25, about two hours on two
cores) and ``--set`` passes extra overrides to every run. Each command is printed before it runs
so every row can be reproduced by hand; ``keep_results.py`` then keeps the metrics and report.
Every run resumes from its last checkpoint, so the same command completes an interrupted table.

The teacher trains first with every thread (``--threads``); the student runs then share the
machine, ``--jobs`` at a time with ``threads // jobs`` threads each (one single-threaded process
per core wastes nothing on OpenMP barriers, unlike one process spread over busy cores). With more
than one job, each run's console output goes to ``<output>/logs/<run>.log``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "camvid"
STUDENT_METHODS = ("kd", "cwd", "review_kd", "transkd_base", "transkd_gl", "transkd_ea")


def thread_env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def run(command: list[str], threads: int) -> None:
    print(f"$ OMP_NUM_THREADS={threads} " + shlex.join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, env=thread_env(threads))
    print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)


def run_pool(commands: list[tuple[str, list[str]]], jobs: int, threads: int, logs: Path) -> None:
    """Run ``commands`` ``jobs`` at a time; stop with an error naming every run that failed."""
    if jobs <= 1:
        for _, command in commands:
            run(command, threads)
        return
    logs.mkdir(parents=True, exist_ok=True)
    pending, running, failed = list(commands), [], []
    while pending or running:
        while pending and len(running) < jobs:
            name, command = pending.pop(0)
            log = logs / f"{name}.log"
            print(f"$ OMP_NUM_THREADS={threads} {shlex.join(command)}  > {log}", flush=True)
            with log.open("w") as handle:
                process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                                           env=thread_env(threads))
            running.append((name, process, time.perf_counter()))
        time.sleep(2)
        for item in list(running):
            name, process, start = item
            if process.poll() is not None:
                running.remove(item)
                status = "done" if process.returncode == 0 else f"FAILED (exit {process.returncode})"
                print(f"  {name}: {status} in {time.perf_counter() - start:.0f} s", flush=True)
                if process.returncode != 0:
                    failed.append(name)
    if failed:
        raise SystemExit(f"run(s) failed: {', '.join(failed)}; see {logs}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CamVid root (train/, trainannot/, val/, valannot/)")
    parser.add_argument("--output", default="runs/camvid_table", help="folder for every run and the report")
    parser.add_argument("--epochs", type=int, default=None, help="override the presets' 40 epochs")
    parser.add_argument("--methods", default=",".join(STUDENT_METHODS),
                        help="comma-separated distillation methods")
    parser.add_argument("--student-model", default=None, metavar="NAME",
                        help="student network of every student run instead of the presets' segformer_b0, "
                             "e.g. timm:resnet18 (runs are then named <method>_b2-<name>)")
    parser.add_argument("--teacher-model", default=None, metavar="NAME",
                        help="teacher network instead of the presets' segformer_b2, e.g. timm:convnext_tiny "
                             "(the teacher run is then teacher_<name>, students <method>_<name>-<student>)")
    parser.add_argument("--skip-plain", action="store_true",
                        help="no plain-student run (when the same student was already trained plain)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every run (repeatable)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads for the teacher run, shared by the student runs (default: all cores)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="student runs at once after the teacher (default 1)")
    args = parser.parse_args()
    if args.jobs < 1 or args.threads < 1:
        parser.error("--jobs and --threads must be at least 1")
    per_job = max(1, args.threads // args.jobs)

    out = Path(args.output)
    overrides = [*args.set] + ([f"train.epochs={args.epochs}"] if args.epochs else [])
    sets = [item for o in overrides for item in ("--set", o)]
    tool = [sys.executable, "-m", "transkd"]
    # --resume auto: a run with a checkpoint continues, a finished one only reports again, so an
    # interrupted table (a session ended, a machine rebooted) is completed by the same command.
    common = ["--data", args.data, "--resume", "auto", *sets]
    student_sets = ["--set", f"model.name={args.student_model}"] if args.student_model else []
    short = (args.student_model or "segformer_b0").split(":")[-1].removeprefix("segformer_")
    plain = "student_b0" if not args.student_model else f"student_{short}"
    teacher_short = (args.teacher_model or "segformer_b2").split(":")[-1].removeprefix("segformer_")
    teacher_sets = ["--set", f"model.name={args.teacher_model}"] if args.teacher_model else []
    # The distillation presets name the B2 teacher; another teacher is named with its weights.
    named_teacher = ["--set", f"teacher.name={args.teacher_model}"] if args.teacher_model else []

    teacher_dir = out / f"teacher_{teacher_short}"
    run([*tool, "train", "--config", str(PRESETS / "teacher_b2_cpu40e.yaml"),
         "--output", str(teacher_dir), *common, *teacher_sets], args.threads)
    teacher = teacher_dir / "best" / "model.safetensors"
    students: list[tuple[str, list[str]]] = []
    if not args.skip_plain:
        students.append((plain, [*tool, "train", "--config", str(PRESETS / "student_b0_cpu40e.yaml"),
                                 "--output", str(out / plain), *common, *student_sets]))
    for method in [m for m in args.methods.split(",") if m]:
        name = f"{method}_{teacher_short}-{short}"
        students.append((name, [
            *tool, "distill", "--config", str(PRESETS / f"{method}_b2-b0_cpu40e.yaml"),
            "--teacher", str(teacher), "--output", str(out / name), *common, *student_sets,
            *named_teacher]))
    # Longest first (the plain run is the shortest), so the cores finish together.
    run_pool(students[1:][::-1] + students[:1] if not args.skip_plain else students,
             args.jobs, per_job, out / "logs")
    runs = [teacher_dir] + [out / name for name, _ in students]
    run([*tool, "report", *map(str, runs), "--output", str(out / "report")], args.threads)
    print(f"report: {out / 'report' / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
