"""A sweep: one teacher, several student runs (methods or configs) × seeds, then one report.

A sweep spec is a small YAML file (every key optional but ``runs``)::

    output: runs/camvid_sweep          # every run goes to <output>/<name>/seed<k>
    seeds: [0, 1, 2]
    selection: train_holdout:0.1       # data.selection of every run; 'val' is refused
    set: [train.epochs=25]             # overrides for every run
    teacher:                           # trained first (config), or given (weights)
      name: teacher_b2
      config: configs/camvid/teacher_b2_cpu40e.yaml
    runs:
      - {name: student_b0, config: configs/camvid/student_b0_cpu40e.yaml}
      - {name: kd, config: configs/camvid/kd_b2-b0_cpu40e.yaml, set: [distill.options.temperature=4]}
    baseline: kd                       # compared with every method besides the plain student
    jobs: 2                            # student runs at once, each with threads // jobs threads
    threads: 2

Every run is the tool's own command (``transkd train``, ``distill``; then ``report``) in a child process with
``--resume auto``: a finished run (``summary.json`` complete) is skipped without starting anything,
an interrupted one continues from its checkpoint, so the same command completes a sweep spread
over several sittings. Paths in the spec are relative to the working folder, as in a config.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, load_config, read_yaml
from ..data.selection import parse_selection
from ..errors import ConfigError, TranskdError
from ..jsonsafe import json_safe
from ..options import Keys, convert
from ..weights.io import deployable_file_name


@dataclass
class TeacherSpec:
    """The teacher every distillation run learns from: trained first, or given."""

    name: str = "teacher"
    config: str | None = None
    set: list[str] = field(default_factory=list)
    #: A trained teacher (.safetensors file) instead of training one.
    weights: str | None = None
    #: Seed of the teacher run (one teacher for every seed of the students).
    seed: int = 0


@dataclass
class RunSpec:
    """One row of the comparison: a config (a method) run once per seed."""

    name: str
    config: str | None = None
    set: list[str] = field(default_factory=list)


@dataclass
class SweepSpec:
    output: str = "runs/sweep"
    seeds: list[int] = field(default_factory=lambda: [0])
    selection: str = "train_holdout:0.1"
    set: list[str] = field(default_factory=list)
    teacher: TeacherSpec | None = None
    runs: list[RunSpec] = field(default_factory=list)
    #: The run every method is compared with besides the plain student (e.g. kd).
    baseline: str | None = None
    jobs: int = 1
    #: Threads in all (default: every core): the teacher uses them all, student runs share them.
    threads: int | None = None
    #: Sample images predicted in the report (0: none).
    report_samples: int = 3


@dataclass
class PlannedRun:
    """One run of the sweep, resolved and validated."""

    name: str  # e.g. kd/seed1
    command: str  # train or distill
    config_path: str | None
    overrides: list[str]
    config: Config
    run_dir: Path

    @property
    def finished(self) -> bool:
        return run_finished(self.run_dir)

    def argv(self) -> list[str]:
        sets = [item for o in self.overrides for item in ("--set", o)]
        config = ["--config", self.config_path] if self.config_path else []
        return [sys.executable, "-m", "transkd", self.command, *config, *sets,
                "--output", str(self.run_dir), "--resume", "auto", "--no-progress"]


@dataclass
class SweepResult:
    output: Path
    ran: list[str]
    skipped: list[str]
    report: Path | None


def run_finished(run_dir: Path) -> bool:
    """A run whose summary.json says it completed every planned step."""
    path = run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(summary, dict) and summary.get("status") == "completed"
            and summary.get("steps") == summary.get("total_steps"))


# --------------------------------------------------------------------------- the spec

def load_spec(path: str | Path | None, seeds: Sequence[int] | None = None,
              overrides: Sequence[str] = (), output: str | None = None,
              teacher_weights: str | None = None, jobs: int | None = None,
              threads: int | None = None) -> SweepSpec:
    """Read and check a spec file; command-line values replace the file's."""
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    keys = Keys(noun="sweep key", owner=f" in {path}" if path else "")
    spec = convert(SweepSpec, data, keys)
    if seeds:
        spec.seeds = list(seeds)
    if output is not None:
        spec.output = output
    if jobs is not None:
        spec.jobs = jobs
    if threads is not None:
        spec.threads = threads
    if teacher_weights is not None:
        spec.teacher = TeacherSpec(name=(spec.teacher.name if spec.teacher else "teacher"),
                                   weights=teacher_weights)
    where = f" in {path}" if path else ""
    for item in overrides:  # NAME:key=value applies to one run, key=value to every run
        head, sep, _ = item.partition("=")
        name, colon, key = head.partition(":")
        if not colon:
            spec.set.append(item)
            continue
        targets = [r for r in spec.runs if r.name == name]
        if spec.teacher is not None and spec.teacher.name == name:
            spec.teacher.set.append(f"{key}{sep}{item.partition('=')[2]}")
        elif not targets:
            raise ConfigError(f"--set {item}: no run named {name!r}{where} (runs: "
                              f"{', '.join(r.name for r in spec.runs)})")
        for run in targets:
            run.set.append(f"{key}{sep}{item.partition('=')[2]}")
    _check_spec(spec, where)
    return spec


def _check_spec(spec: SweepSpec, where: str) -> None:
    if not spec.runs:
        raise ConfigError(f"sweep key 'runs'{where} must list at least one run "
                          "(name and config of each)")
    names = [r.name for r in spec.runs] + ([spec.teacher.name] if spec.teacher else [])
    for name in names:
        if not name or "/" in name or name.startswith(".") or names.count(name) > 1:
            raise ConfigError(f"sweep run name {name!r}{where} must be unique, non-empty and "
                              "without '/'")
    if not spec.seeds or len(set(spec.seeds)) != len(spec.seeds) or min(spec.seeds) < 0:
        raise ConfigError(f"sweep key 'seeds'{where} must be distinct non-negative integers, got "
                          f"{spec.seeds}")
    if spec.jobs < 1 or (spec.threads is not None and spec.threads < 1):
        raise ConfigError(f"sweep keys 'jobs' and 'threads'{where} must be at least 1")
    if spec.report_samples < 0:
        raise ConfigError(f"sweep key 'report_samples'{where} must be non-negative")
    if parse_selection(spec.selection, "sweep key 'selection'").on_reported_split:
        raise ConfigError(f"sweep key 'selection'{where} is {spec.selection!r}, which chooses the "
                          "checkpoint on the reported split; use train_holdout:0.1 or last")
    if spec.baseline is not None and spec.baseline not in {r.name for r in spec.runs}:
        raise ConfigError(f"sweep key 'baseline'{where} names {spec.baseline!r}, not a run of the "
                          f"sweep ({', '.join(r.name for r in spec.runs)})")
    if spec.teacher is not None and spec.teacher.config is None and spec.teacher.weights is None:
        raise ConfigError(f"sweep key 'teacher'{where} needs 'config' (to train it) or 'weights'")


# --------------------------------------------------------------------------- the plan

def plan_sweep(spec: SweepSpec) -> tuple[PlannedRun | None, list[PlannedRun]]:
    """Resolve and validate every run's config before anything runs."""
    output = Path(spec.output)
    common = [*spec.set, f"data.selection={spec.selection}"]
    teacher = None
    teacher_file: str | None = None
    if spec.teacher is not None and spec.teacher.weights is not None:
        teacher_file = spec.teacher.weights
        if not Path(teacher_file).exists():
            raise ConfigError(f"sweep teacher weights {teacher_file} do not exist")
    elif spec.teacher is not None:
        t = spec.teacher
        teacher = _planned(t.name, t.config, [*common, *t.set, f"train.seed={t.seed}"],
                           output / t.name)
        teacher_file = str(output / t.name / "best" / deployable_file_name(distilled=False))
    runs = []
    for seed in spec.seeds:
        for run in spec.runs:
            extra = [*common, *run.set, f"train.seed={seed}"]
            planned = _planned(f"{run.name}/seed{seed}", run.config, extra, output / run.name /
                               f"seed{seed}", teacher_file)
            runs.append(planned)
    return teacher, runs


def _planned(name: str, config_path: str | None, overrides: list[str], run_dir: Path,
             teacher_file: str | None = None) -> PlannedRun:
    overrides = [*overrides, f"output.dir={_quoted(run_dir)}"]
    with_teacher = overrides + ([f"teacher.weights={_quoted(teacher_file)}"] if teacher_file else [])
    config = _resolve(name, config_path, with_teacher)
    if config.method_names:
        overrides = with_teacher
    elif teacher_file is not None:  # trained alone: the teacher is no part of its config
        config = _resolve(name, config_path, overrides)
    _check_existing(name, run_dir, config)
    return PlannedRun(name, "distill" if config.method_names else "train", config_path, overrides,
                      config, run_dir)


def _quoted(path: str | Path) -> str:
    """A path as a YAML string, whatever characters it holds."""
    return "'" + str(path).replace("'", "''") + "'"


def _resolve(name: str, config_path: str | None, overrides: list[str]) -> Config:
    try:
        return load_config(config_path, overrides)
    except ConfigError as exc:
        raise ConfigError(f"sweep run {name}: {exc}") from None


def _check_existing(name: str, run_dir: Path, config: Config) -> None:
    """A run folder left by an earlier sitting must hold this very run, or resuming would mix two."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    try:
        before = load_config(saved).to_dict()
    except ConfigError:
        before = None
    if json_safe(before) != json_safe(config.to_dict()):
        raise ConfigError(f"sweep run {name}: {run_dir} holds a run with another config (the spec "
                          "changed); choose another sweep output folder or remove that run folder")


# --------------------------------------------------------------------------- running

def run_sweep(spec: SweepSpec, announce: Callable[[str], None] | None = None) -> SweepResult:
    """Teacher first (every thread), then the student runs (``jobs`` at a time), then the report.

    Stops with one sentence naming every failed run; an interrupt stops the children (each keeps
    a resumable checkpoint) and is raised again."""
    say = announce or (lambda _message: None)
    teacher, runs = plan_sweep(spec)
    with _terminate_as_interrupt():
        return _run(spec, teacher, runs, say)


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (a scheduler's notice) stops the sweep like Ctrl-C: children keep checkpoints."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(spec: SweepSpec, teacher: PlannedRun | None, runs: list[PlannedRun],
         say: Callable[[str], None]) -> SweepResult:
    output = Path(spec.output)
    logs = output / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    threads = spec.threads or os.cpu_count() or 1
    per_job = max(1, threads // spec.jobs)
    ran, skipped = [], []
    if teacher is not None:
        _run_batch([teacher], 1, threads, logs, say, ran, skipped)
    _run_batch(runs, spec.jobs, per_job, logs, say, ran, skipped)
    folders = ([teacher.run_dir] if teacher is not None else []) + [r.run_dir for r in runs]
    report = output / "report"
    if not ran and _newer_than_every_run(report / "REPORT.md", folders):
        say(f"report: up to date ({report / 'REPORT.md'})")
        return SweepResult(output, ran, skipped, report / "REPORT.md")
    command = [sys.executable, "-m", "transkd", "report", *map(str, folders), "--output", str(report),
               "--samples", str(spec.report_samples)]
    command += ["--baseline", spec.baseline] if spec.baseline else []
    log = logs / "report.log"
    say(f"report of {len(folders)} runs: started; log {log}")
    with log.open("w", encoding="utf-8") as handle:
        handle.write(f"$ {shlex.join(command)}\n")
        handle.flush()
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=_threads(threads)
                              ).returncode
    if code != 0:
        raise TranskdError(f"the sweep's report failed (exit {code}); see {log}")
    return SweepResult(output, ran, skipped, report / "REPORT.md")


def _newer_than_every_run(path: Path, folders: list[Path]) -> bool:
    """Whether ``path`` exists and was written after every run's summary.json."""
    try:
        written = path.stat().st_mtime_ns
        return all((f / "summary.json").stat().st_mtime_ns < written for f in folders)
    except OSError:
        return False


def _threads(count: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(count), "MKL_NUM_THREADS": str(count)}


def _run_batch(runs: list[PlannedRun], jobs: int, threads: int, logs: Path,
               say: Callable[[str], None], ran: list[str], skipped: list[str]) -> None:
    pending = []
    for run in runs:
        if run.finished:
            say(f"{run.name}: finished earlier ({run.run_dir}), skipped")
            skipped.append(run.name)
        else:
            pending.append(run)
    running: list[tuple[PlannedRun, subprocess.Popen, float]] = []
    failed: list[str] = []
    env = _threads(threads)
    try:
        while pending or running:
            while pending and len(running) < jobs:
                run = pending.pop(0)
                log = logs / f"{run.name.replace('/', '_')}.log"
                resumed = " (resuming)" if (run.run_dir / "checkpoints").is_dir() else ""
                say(f"{run.name}: started{resumed}, {threads} thread(s); log {log}")
                with log.open("a", encoding="utf-8") as handle:
                    handle.write(f"$ OMP_NUM_THREADS={threads} {shlex.join(run.argv())}\n")
                    handle.flush()
                    # its own session: a signal reaches it once, forwarded below
                    process = subprocess.Popen(run.argv(), stdout=handle, stderr=subprocess.STDOUT,
                                               env=env, start_new_session=True)
                running.append((run, process, time.perf_counter()))
            time.sleep(0.2)
            for item in list(running):
                run, process, start = item
                if process.poll() is None:
                    continue
                running.remove(item)
                seconds = time.perf_counter() - start
                if process.returncode == 0:
                    say(f"{run.name}: done in {seconds:.0f} s")
                    ran.append(run.name)
                elif process.returncode == 130:
                    raise KeyboardInterrupt
                else:
                    say(f"{run.name}: FAILED (exit {process.returncode}) after {seconds:.0f} s")
                    failed.append(run.name)
    except KeyboardInterrupt:
        for _, process, _ in running:  # each child saves a resumable checkpoint on SIGINT
            process.send_signal(signal.SIGINT)
        for _, process, _ in running:
            process.wait()
        raise
    if failed:
        raise TranskdError(f"sweep run(s) {', '.join(failed)} failed; see their logs in {logs}")
