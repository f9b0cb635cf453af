"""A training run from a config: check every input, then create the run folder, then train.

:func:`plan_run` does all the checking (datasets, batch size, teacher, output folder, resume
checkpoint) without writing anything, so a bad input fails with one sentence and leaves no
partial output. :func:`execute` writes ``config.yaml`` and trains; if it fails before writing a
checkpoint, it removes what it wrote (a new run folder entirely; in an existing run folder the
new files, and ``config.yaml`` goes back to what it was). Run folder layout::

    RUN/config.yaml             the resolved config (every default filled in)
    RUN/metrics.jsonl           one JSON record per log line (train, val, teacher_val, event)
    RUN/tensorboard/            TensorBoard event files
    RUN/checkpoints/last.pt     resumable state (``--resume auto`` or ``--resume RUN``)
    RUN/checkpoints/previous.pt the checkpoint before it (used if last.pt is damaged)
    RUN/best/model.safetensors  the deployable network at its best validation mIoU (student.safetensors
                                when distilled, with adapters.safetensors next to it if any)
    RUN/last/model.safetensors  ... at the end
    RUN/summary.json            final numbers and where everything went
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import NO_DATASET, Config
from ..data.protocols import ProtocolOptions
from ..distill import needs_teacher
from ..errors import CheckpointError, ConfigError
from ..jsonsafe import json_safe
from ..models import create_model
from ..weights.io import atomic_write, load_state_strict
from . import build
from .checkpoint import LAST_NAME, resolve_resume, verify_resume
from .distributed import DistEnv, barrier, elastic_restart, init_distributed
from .lock import LOCK_NAME, RunLock, check_not_in_use
from .trainer import RunResult, Trainer, seed_everything
from .unlabelled import agreement_images, training_frame, transformed_unlabelled


@dataclass
class RunPlan:
    """A checked run: everything needed to start, nothing written yet."""

    config: Config
    run_dir: Path
    resume: Path | None
    bundle: build.DataBundle
    teacher: nn.Module | None
    env: DistEnv
    device: torch.device
    #: Set when the resume checkpoint was damaged and its predecessor is used instead.
    resume_note: str | None = None


def default_run_dir(config: Config) -> Path:
    """``runs/<dataset>/<name>``: ``segformer_b0`` for plain training,
    ``transkd_base_b2-b0`` for distillation."""
    student = config.model.name
    if config.method_names:
        teacher = config.teacher.name or Path(config.teacher.weights or "teacher").stem
        name = f"{config.distill.method}_{_short(teacher)}-{_short(student)}"
    else:
        name = student
    return Path("runs") / config.data.name / name


def _short(model_name: str) -> str:
    return model_name.removeprefix("segformer_")


def check_output_dir(path: Path, resuming: bool) -> None:
    """The run folder must be creatable and writable, and not hold another run."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output folder {path} is a file; choose a folder with --output")
    if path.is_dir():
        if not resuming and ((path / "config.yaml").exists() or (path / "checkpoints").exists()):
            raise ConfigError(f"output folder {path} already holds a run; continue it with "
                              "--resume auto or choose another folder with --output")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"output folder {path} is not writable")
        return
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"output folder {path} cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"output folder {path} cannot be created: {parent} is not writable")


def plan_run(config: Config, resume: str | None = None, env: DistEnv | None = None) -> RunPlan:
    """Check every input of a run and return the plan; raises one-sentence errors."""
    if config.train.iterations is not None:
        config.schedule.check_length(config.train.iterations)
    device = build.resolve_device(config.train.device)
    env = env or init_distributed(device.type)
    if env.enabled and device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
    if config.train.sync_bn and env.enabled and device.type != "cuda":
        raise ConfigError("config key 'train.sync_bn' needs CUDA: PyTorch's SyncBatchNorm does not "
                          "run on the CPU (use train.freeze_bn or a larger per-process batch)")
    run_dir = Path(config.output.dir) if config.output.dir else default_run_dir(config)
    if env.is_main:
        check_not_in_use(run_dir)
    if resume is None and elastic_restart() > 0:
        resume = "auto"  # torchrun restarted the job after a process failed: continue it
    resume_path = resolve_resume(resume, run_dir / "checkpoints")
    resume_note = resume_state = None
    if resume_path is not None:
        resume_path, resume_note, resume_state = verify_resume(resume_path)
    if elastic_restart() > 0:
        restart = f"torchrun restarted the job (restart {elastic_restart()})"
        restart += (": continuing from its last checkpoint" if resume_path is not None
                    else ": no checkpoint was written yet, starting again")
        resume_note = f"{restart}; {resume_note}" if resume_note else restart
    check_output_dir(run_dir, resuming=resume is not None)
    if config.model.init is not None and not Path(config.model.init).is_file():
        raise ConfigError(f"model.init {config.model.init} does not exist")
    teacher = None
    if config.data.name == NO_DATASET:  # the classes are the teacher's
        teacher = build.load_teacher(config, None)
    bundle = build.open_datasets(config, teacher=teacher)
    build.check_batch_fits(config, bundle, env.world_size)
    if config.model.init is not None:  # a damaged or misfitting file fails before any output
        build.build_network(config, bundle.num_outputs)
    if resume_state is not None:
        _check_resume_fits(config, bundle.num_outputs, resume_path, resume_state)
    if teacher is None and needs_teacher(config.distill.method):
        teacher = build.load_teacher(config, bundle)
    return RunPlan(config, run_dir, resume_path, bundle, teacher, env, device, resume_note)


def _check_resume_fits(config: Config, num_outputs: int, path: Path, state: dict[str, Any]) -> None:
    """The checkpoint's student must be this run's network (architecture and class count)."""
    saved = state.get("student")
    if saved and saved != config.model.name:
        raise CheckpointError(f"--resume {path} continues a {saved} run, but model.name is "
                              f"{config.model.name}")
    student = {k.removeprefix("student."): v for k, v in state["model"].items()
               if k.startswith("student.")}
    network = create_model(config.model.name, num_classes=num_outputs, **config.model.options)
    load_state_strict(network, student, source=f"--resume {path}")


def export_metadata(config: Config, bundle: build.DataBundle, teacher: nn.Module | None) -> dict[str, Any]:
    """What the exported student carries besides its weights: classes, palette, protocol."""
    protocol = config.protocol
    return {
        "dataset": bundle.name,
        "class_names": list(bundle.class_names),
        "palette": [list(c) for c in bundle.palette],
        "ignore_index": protocol.ignore_index,
        "void_as_extra_class": protocol.void_as_extra_class,
        **protocol_description(config),
        "protocol_options": json_safe(protocol.to_dict()),
        "method": config.distill.method,
        "teacher": getattr(teacher, "model_name", None),
        "resize": eval_resize(protocol),
        "inference_options": {"mode": config.eval.mode, "crop": json_safe(config.eval.crop),
                              "stride": json_safe(config.eval.stride)},
    }


def eval_resize(protocol: ProtocolOptions) -> dict[str, Any] | None:
    """How the evaluation pipeline resizes an image, for ``transkd predict`` to do the same."""
    return protocol.protocol().eval_resize()


def protocol_description(config: Config) -> dict[str, Any]:
    """Words for what the numbers mean: protocol, input size, metric resolution, inference."""
    inference = config.eval.mode
    if config.eval.mode == "slide":
        inference += f" {config.eval.crop[0]}x{config.eval.crop[1]}"
    if len(config.eval.scales) > 1 or config.eval.flip:
        inference += f", scales {list(config.eval.scales)}" + (", flip" if config.eval.flip else "")
    return {**config.protocol.protocol().words(), "inference": inference}


def training_plan(config: Config, total_steps: int, steps_per_epoch: int) -> str:
    """One line naming the run's length and the unit its intervals count, for the training log."""
    train, schedule = config.train, config.schedule
    unit = train.interval_unit
    length = (f"{_count(train.epochs, 'epochs')} of {_count(steps_per_epoch, 'steps')} "
              f"({_count(total_steps, 'steps')})" if unit == "epochs" else _count(total_steps, "iterations"))
    lr = f"lr {schedule.kind}"
    if schedule.kind == "standard" and schedule.warmup_iters:
        lr += f" with {schedule.warmup_iters} warm-up iterations"
    return (f"plan: {length}; {lr}; validation {_every(train.val_interval, unit)}, checkpoint "
            f"{_every(train.checkpoint_interval, unit)}, log {_every(train.log_interval, 'steps')}")


def _every(count: int, unit: str) -> str:
    """``every epoch``, ``every 500 iterations``."""
    return f"every {unit.removesuffix('s')}" if count == 1 else f"every {count} {unit}"


def _count(count: int, unit: str) -> str:
    """``1 epoch``, ``40 epochs``."""
    return f"1 {unit.removesuffix('s')}" if count == 1 else f"{count} {unit}"


class StartGuard:
    """Undoes what starting a run wrote when it fails before its first checkpoint, so a failed
    start leaves the output folder as it found it (nothing to resume was produced anyway)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.created = _topmost_missing(run_dir)
        self.existing = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else set()
        config = run_dir / "config.yaml"
        self.config = config.read_bytes() if config.is_file() else None
        self.checkpoint = _stamp(run_dir / "checkpoints" / LAST_NAME)

    def undo(self) -> None:
        if _stamp(self.run_dir / "checkpoints" / LAST_NAME) != self.checkpoint:
            return  # a checkpoint was written: the run can be resumed, keep everything
        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)
            return
        for path in self.run_dir.iterdir():
            if path.name not in self.existing and path.name != LOCK_NAME:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        if self.config is not None:
            atomic_write(self.run_dir / "config.yaml", lambda tmp: Path(tmp).write_bytes(self.config))


def _topmost_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (None if ``path`` exists)."""
    missing = None
    while not path.exists():
        missing, path = path, path.parent
    return missing


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def execute(plan: RunPlan, announce: Callable[[str], None] | None = None, progress: bool = True,
            on_step: Callable[[], None] | None = None) -> RunResult:
    """Write ``config.yaml``, build the networks, train; returns the :class:`RunResult`.

    ``announce`` (if given) is told each validation result as a line of text; ``progress`` and
    ``on_step`` go to the :class:`Trainer`. A failure before the first checkpoint leaves the
    output folder as it was (see :class:`StartGuard`)."""
    guard = StartGuard(plan.run_dir) if plan.env.is_main else None
    # The main process holds the folder's lock while it trains; a refusal writes nothing.
    with RunLock(plan.run_dir) if plan.env.is_main else contextlib.nullcontext():
        try:
            return _execute(plan, announce, progress, on_step)
        except BaseException:
            if guard is not None:
                guard.undo()
            raise


def _execute(plan: RunPlan, announce: Callable[[str], None] | None, progress: bool,
             on_step: Callable[[], None] | None) -> RunResult:
    config, env = plan.config, plan.env
    seed_everything(config.train.seed)
    student = build.build_network(config, plan.bundle.num_outputs)
    note = build.adopt_student_normalisation(config, student)  # before the pipeline is built
    if note is not None and announce is not None and env.is_main:
        announce(note)
    barrier(env)  # every rank has checked the output folder before the first one writes to it
    if env.is_main:
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        (plan.run_dir / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
    barrier(env)
    criterion = build.criterion_for(config, plan.bundle, plan.device)
    distiller = build.build_distiller(config, student, plan.teacher, criterion)
    if env.enabled:  # different dropout/drop-path draws per rank, same initial weights
        seed_everything(config.train.seed + env.rank)
    on_device = build.normalizes_on_device(config, plan.device)
    train_set, val_set = build.transformed(plan.bundle, config, normalize_on_device=on_device)
    unlabelled = plan.bundle.unlabelled
    unlabelled_set, counts = None, {}
    if unlabelled is not None:
        frame = training_frame(config, plan.bundle.train, unlabelled.images)
        unlabelled_set = transformed_unlabelled(config, unlabelled.images, plan.bundle.num_classes,
                                                frame, normalize_on_device=on_device)
        counts = {"labelled_images": len(plan.bundle.train) if plan.bundle.train is not None else 0,
                  "unlabelled_images": len(unlabelled.images),
                  "unreadable_skipped": len(unlabelled.skipped)}
        if announce is not None and env.is_main:
            announce(unlabelled.describe())
    agreement = val_set is None
    if agreement:  # no labelled split: the student's agreement with the teacher
        picked = agreement_images(config, unlabelled.images)
        frame = None if (config.protocol.protocol().fixed_input_size() is not None
                         or config.eval.batch_size == 1) else picked.size(0)
        val_set = transformed_unlabelled(config, picked, plan.bundle.num_classes, frame, train=False)
    trainer = Trainer(config, distiller, train_set, val_set, num_classes=plan.bundle.num_classes,
                      run_dir=plan.run_dir if env.is_main else None, env=env, device=plan.device,
                      resume=plan.resume,
                      metadata=export_metadata(config, plan.bundle, plan.teacher), announce=announce,
                      progress=progress, on_step=on_step, unlabelled_set=unlabelled_set,
                      agreement=agreement, data_counts=counts,
                      select_set=build.transformed_selection(plan.bundle, config))
    trainer.prepare()  # training MACs measured, a budget turned into steps
    config.schedule.check_length(trainer.total_steps)
    if announce is not None and env.is_main:
        announce(training_plan(config, trainer.total_steps, trainer.steps_per_epoch))
        announce(f"checkpoint reported: {trainer.selection_label}"
                 + (f"; budget {trainer.budget_record['label']} = {trainer.total_steps} steps"
                    if trainer.budget_record else ""))
    return trainer.fit()


def run(config: Config, resume: str | None = None) -> RunResult:
    """Plan and execute a run (the library entry point behind ``transkd train``/``distill``)."""
    return execute(plan_run(config, resume))
