"""The one training loop: teacher training, student training and distillation alike.

Every run goes through the :class:`~transkd.distill.Distiller` interface: plain training is the
method ``none`` (cross-entropy only), distillation adds a frozen teacher and the method's
adapters. The loop owns what is common to all of them: AdamW over ``distiller.parameters()``
(student + adapters; the teacher is not a submodule; split into groups by ``engine/optim.py``),
the learning-rate schedule, mixed precision, gradient accumulation, DDP, validation, checkpoints and logs.

Reproducibility: seeds for torch/NumPy/Python; augmentation drawn from a per-sample generator
seeded by ``[seed, epoch, index]``; the sampler's order a pure function of ``(seed, epoch)``;
DataLoaders with their own generator so creating an iterator never touches the global RNG.
A checkpoint holds every RNG state and the data position (epoch + batches consumed), so a
resumed run on the CPU is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import Config, parse_budget
from ..data.selection import HOLDOUT, LAST, VAL, parse_selection
from ..distill import Distiller
from ..errors import ConfigError, DatasetError, DiskFullError, TranskdError
from ..jsonsafe import json_safe
from ..progress import Progress
from ..weights.io import atomic_write, deployable_file_name, load_state_strict
from .checkpoint import (
    capture_rng_state,
    export_weights,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from .compute import budget_steps, calibrate_step_seconds, measure_training_macs
from .data_faults import data_fault
from .distributed import (
    DistEnv,
    EpochIndexedDataset,
    EpochSampler,
    ShardSampler,
    StreamSampler,
    any_true,
    mean_over_ranks,
    wrap_ddp,
)
from .evaluate import InferenceOptions, evaluate
from .interrupt import StopRequest
from .logging import MetricsLogger
from .optim import GroupRule, adamw, check_resumable, parameter_groups
from .schedule import LRSchedule, ScheduleSpec

#: Folder of a run holding the reported checkpoint's per-image confusion matrices.
PER_IMAGE_DIR = "evaluation"
#: What validation measures when no labelled split exists (the name used wherever it is shown).
AGREEMENT = "agreement with teacher"


class NonFiniteLossError(TranskdError):
    """Training stopped because a loss term became NaN or infinite."""


@dataclass
class RunResult:
    """What a finished (or interrupted) run produced."""

    run_dir: Path
    status: str  # "completed" or "interrupted"
    steps: int
    total_steps: int
    best: dict[str, Any] | None
    last_val: dict[str, Any] | None
    teacher_val: dict[str, Any] | None
    train_seconds: float
    skipped_steps: int
    checkpoint: Path | None
    best_weights: Path | None
    last_weights: Path | None
    extra: dict[str, Any] = field(default_factory=dict)
    stopped_by: str | None = None  # the signal that interrupted it (e.g. "SIGTERM"), if this rank saw one


@dataclass
class Position:
    """Where the run stands: optimiser steps done, current epoch, batches consumed in it."""

    step: int = 0
    epoch: int = 0
    batch: int = 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def determinism(enabled: bool, device: torch.device):
    """``torch.use_deterministic_algorithms`` for the run's duration (restored afterwards)."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_benchmark = torch.backends.cudnn.benchmark
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.backends.cudnn.benchmark = previous_benchmark


def autocast_dtype(precision: str) -> torch.dtype | None:
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def freeze_batchnorm(module: nn.Module) -> None:
    for child in module.modules():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            child.eval()


def first_non_finite(terms: dict[str, torch.Tensor]) -> tuple[str, float]:
    for key, value in terms.items():
        number = float(value.detach())
        if not math.isfinite(number):
            return key, number
    return "loss", float("nan")


class Trainer:
    """Runs one training job on an assembled Distiller and datasets.

    ``train_set``/``val_set`` are protocol-transformed datasets (``TransformedDataset``);
    ``unlabelled_set`` (an ``UnlabelledTransformedDataset``) adds ``data.unlabelled_ratio``
    unlabelled images to every labelled batch, read as a second stream (:class:`StreamSampler`)
    whose position follows from the labelled one; without ``train_set`` the unlabelled images are
    the only stream. ``agreement``: ``val_set`` holds unlabelled images, and validation measures
    the student's agreement with the teacher instead of accuracy against labels;
    ``metadata`` is written into the exported deployable network (dataset classes, palette,
    protocol) so the file alone is enough for prediction. ``progress`` turns the step bar (or,
    off a terminal, the progress lines) on or off; ``on_step`` is called after every step (the
    demo's overall progress).
    """

    def __init__(self, config: Config, distiller: Distiller, train_set, val_set, *,
                 num_classes: int, run_dir: Path | None, env: DistEnv | None = None,
                 device: torch.device | str = "cpu", resume: Path | None = None,
                 metadata: dict[str, Any] | None = None,
                 announce: Callable[[str], None] | None = None, progress: bool = True,
                 on_step: Callable[[], None] | None = None, unlabelled_set=None,
                 agreement: bool = False, data_counts: dict[str, int] | None = None,
                 select_set=None) -> None:
        self.config = config
        self.unlabelled_set = unlabelled_set
        self.agreement = agreement
        self.data_counts = data_counts or {}
        #: What chooses best/ (data.selection) and the held-out images it uses, if any.
        self.selection = parse_selection(config.data.selection)
        self.select_set = select_set
        if self.selection.mode == HOLDOUT and select_set is None:
            raise TranskdError("data.selection holds out training images, but no held-out split "
                               "was given to the trainer")
        self.budget = parse_budget(config.train.budget)
        self.compute: dict[str, Any] = {}
        self.budget_record: dict[str, Any] | None = None
        self._prepared = False
        self.announce = announce
        self.progress = progress
        self.on_step = on_step
        self.distiller = distiller
        self.train_set = train_set
        self.val_set = val_set
        self.num_classes = num_classes
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.env = env or DistEnv()
        self.device = torch.device(device)
        self.resume = resume
        self.metadata = dict(metadata or {})
        self.is_main = self.env.is_main and self.run_dir is not None
        self.stop = StopRequest()  # replaced by the installed one while fit() runs

        train = config.train
        self.batch_size = train.batch_size
        self.accum = train.grad_accum
        #: Whether the epoch stream carries labels (else it is the unlabelled images alone).
        self.primary_labelled = train_set is not None
        primary = train_set if train_set is not None else unlabelled_set
        self.primary_set = primary
        self.sampler = EpochSampler(len(primary), seed=train.seed, rank=self.env.rank,
                                    world_size=self.env.world_size)
        #: Unlabelled images beside each labelled batch (0: none, or they are the epoch stream).
        self.unlabelled_per_batch = (round(self.batch_size * config.data.unlabelled_ratio)
                                     if train_set is not None and unlabelled_set is not None else 0)
        self.stream = (StreamSampler(len(unlabelled_set), seed=train.seed, rank=self.env.rank,
                                     world_size=self.env.world_size)
                       if self.unlabelled_per_batch else None)
        self.drop_last = train.drop_last
        batches_per_epoch = (self.sampler.per_rank // self.batch_size if self.drop_last
                             else -(-self.sampler.per_rank // self.batch_size))
        self.steps_per_epoch = batches_per_epoch // self.accum
        if self.steps_per_epoch < 1:
            raise TranskdError(f"train.batch_size {self.batch_size} × train.grad_accum {self.accum} "
                               f"is larger than the {self.sampler.per_rank} training samples per process")
        self.by_epochs = train.epochs is not None
        self.total_steps = (train.epochs * self.steps_per_epoch if self.by_epochs
                            else int(train.iterations))
        if self.budget is not None and self.budget.kind == "steps":
            self.total_steps = int(self.budget.amount)
        self.amp_dtype = autocast_dtype(train.precision)
        self.inference = InferenceOptions(mode=config.eval.mode, crop=config.eval.crop,
                                          stride=config.eval.stride, scales=config.eval.scales,
                                          flip=config.eval.flip)

    # ------------------------------------------------------------------ set-up

    def _loaders(self) -> tuple[DataLoader, DataLoader, DataLoader | None]:
        workers = self.config.train.num_workers
        common: dict[str, Any] = dict(num_workers=workers, pin_memory=self.device.type == "cuda",
                                      persistent_workers=workers > 0)
        if workers > 0:
            common["prefetch_factor"] = 4
        seed = self.config.train.seed
        self.indexed_train = EpochIndexedDataset(self.primary_set)
        train_loader = DataLoader(self.indexed_train, batch_size=self.batch_size,
                                  sampler=self.sampler, drop_last=self.drop_last,
                                  generator=torch.Generator().manual_seed(seed), **common)
        unlabelled_loader = None
        if self.stream is not None:
            unlabelled_loader = DataLoader(EpochIndexedDataset(self.unlabelled_set),
                                           batch_size=self.unlabelled_per_batch, sampler=self.stream,
                                           drop_last=True,
                                           generator=torch.Generator().manual_seed(seed), **common)
        val_sampler = ShardSampler(len(self.val_set), self.env.rank, self.env.world_size)
        val_loader = DataLoader(self.val_set, batch_size=self.config.eval.batch_size,
                                sampler=val_sampler, generator=torch.Generator().manual_seed(seed),
                                **common)
        self.select_loader = None
        if self.select_set is not None:
            self.select_loader = DataLoader(
                self.select_set, batch_size=self.config.eval.batch_size,
                sampler=ShardSampler(len(self.select_set), self.env.rank, self.env.world_size),
                generator=torch.Generator().manual_seed(seed), **common)
        return train_loader, val_loader, unlabelled_loader

    # ------------------------------------------------------------------ compute and budget

    @property
    def images_per_step(self) -> int:
        """Images through the networks per optimiser step, unlabelled ones included."""
        return (self.batch_size + self.unlabelled_per_batch) * self.accum * self.env.world_size

    def prepare(self) -> None:
        """Measure the training MACs and turn ``train.budget`` into a number of steps (once)."""
        if self._prepared:
            return
        self._prepared = True
        self.distiller.to(self.device)
        try:
            self.compute = measure_training_macs(self.distiller, self.primary_set, self.device)
        except (TranskdError, RuntimeError, ValueError, TypeError, KeyError) as exc:  # a network the counter
            # cannot run on one image in eval mode: the run trains, its compute says why n/a
            if self.budget is not None and self.budget.kind == "macs":
                raise ConfigError(f"config key 'train.budget' counts training MACs, which could not "
                                  f"be measured ({str(exc).splitlines()[0]}); use steps: or "
                                  "seconds:") from None
            self.compute = {"note": f"training MACs not measured: {exc}"}
        per_image = self.compute.get("per_image")
        self.compute["per_step"] = per_image * self.images_per_step if per_image else None
        self.compute["images_per_step"] = self.images_per_step
        if self.budget is None:
            return
        record: dict[str, Any] = {"kind": self.budget.kind, "amount": self.budget.amount,
                                  "label": self.budget.label}
        if self.budget.kind == "seconds":
            saved = load_checkpoint(self.resume) if self.resume is not None else {}
            if saved.get("budget"):  # a resumed run keeps the length it was planned with
                record = dict(saved["budget"])
            else:
                seconds = calibrate_step_seconds(self.distiller, self.primary_set, self.batch_size,
                                                 self.accum, self.device)
                # every process must plan the same number of steps
                record["calibrated_step_seconds"] = mean_over_ranks({"s": seconds}, self.env,
                                                                    self.device)["s"]
                record["steps"] = budget_steps(self.budget, None, record["calibrated_step_seconds"])
        else:
            record["steps"] = budget_steps(self.budget, self.compute["per_step"], None)
        self.total_steps = int(record["steps"])
        self.budget_record = record

    def _optimizer(self) -> torch.optim.Optimizer:
        optim = self.config.optim
        rule = GroupRule(head_lr_mult=optim.head_lr_mult, no_decay=tuple(optim.no_decay))
        groups = parameter_groups(self.distiller, optim.lr, optim.weight_decay, rule)
        return adamw(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                     weight_decay=optim.weight_decay)

    def _schedule(self, optimizer: torch.optim.Optimizer) -> LRSchedule:
        cfg = self.config.schedule
        spec = ScheduleSpec(kind=cfg.kind, total_steps=self.total_steps,
                            steps_per_epoch=self.steps_per_epoch, power=cfg.power,
                            horizon=self.config.schedule_horizon(), warmup_iters=cfg.warmup_iters,
                            warmup_ratio=cfg.warmup_ratio, min_lr_ratio=cfg.min_lr_ratio)
        return LRSchedule(optimizer, spec)

    # ------------------------------------------------------------------ the run

    def fit(self) -> RunResult:
        config = self.config
        with determinism(config.train.deterministic, self.device), StopRequest() as stop:
            self.stop = stop
            return self._fit()

    def _fit(self) -> RunResult:
        config = self.config
        self.prepare()
        distiller = self.distiller.to(self.device)
        if config.train.channels_last:
            distiller.to(memory_format=torch.channels_last)
        if config.train.sync_bn and self.env.enabled:
            distiller.student = nn.SyncBatchNorm.convert_sync_batchnorm(distiller.student)
            distiller.methods = nn.SyncBatchNorm.convert_sync_batchnorm(distiller.methods)
        mean, std = config.protocol.input_normalization()
        distiller.student.input_mean, distiller.student.input_std = tuple(mean), tuple(std)

        optimizer = self._optimizer()
        schedule = self._schedule(optimizer)
        scaler = torch.amp.GradScaler(self.device.type, enabled=config.train.precision == "fp16")
        model = wrap_ddp(distiller, self.env, self.device, config.train.find_unused_parameters)
        train_loader, val_loader, self.unlabelled_loader = self._loaders()
        logger = MetricsLogger(self.run_dir, enabled=self.is_main, tensorboard=config.train.tensorboard)

        try:
            return self._run(distiller, model, optimizer, schedule, scaler, train_loader,
                             val_loader, logger)
        finally:
            logger.close()

    def _run(self, distiller, model, optimizer, schedule, scaler, train_loader, val_loader,
             logger) -> RunResult:
        config = self.config
        self.position = Position()
        self.best: dict[str, Any] | None = None
        self.last_val: dict[str, Any] | None = None
        self.teacher_val: dict[str, Any] | None = None
        self.skipped = 0
        self.bad_samples = 0
        self.logger = logger
        self.elapsed_before = 0.0
        self.step_seconds = 0.0
        self.last_select: dict[str, Any] | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.reported: dict[str, Any] | None = None
        self.checkpoint_path: Path | None = None
        self.agreed_stop = False
        self.best_weights: Path | None = None
        self.last_weights: Path | None = None
        rng_state = None
        if self.resume is not None:
            rng_state = self._load(self.resume, optimizer, schedule, scaler)
            logger.log("event", self.position.step, event="resumed", checkpoint=str(self.resume),
                       epoch=self.position.epoch, batch=self.position.batch)

        self._log_data_plan(logger)
        if (self.teacher_val is None and distiller.teacher is not None and not self.agreement
                and config.distill.eval_teacher):
            self.teacher_val = self._evaluate(distiller.teacher_on_student_inputs(), val_loader)
            logger.log("teacher_val", self.position.step, **_public(self.teacher_val))
            if self.announce is not None and self.is_main:
                self.announce(f"teacher val mIoU {100 * self.teacher_val['miou']:.2f}%, pixel acc "
                              f"{100 * self.teacher_val['acc']:.2f}% (measured once, before distilling)")

        if rng_state is not None:
            restore_rng_state(rng_state)
        self.rng_at_step = capture_rng_state()
        start = time.perf_counter()
        status = "completed"
        network = getattr(distiller.student, "model_name", "student")
        bar = Progress(self.total_steps, initial=self.position.step, enabled=self.is_main and self.progress,
                       description=network if distiller.method_name == "none"
                       else f"{network} {distiller.method_name}",
                       interval=config.train.log_interval)
        state = (model, optimizer, schedule, scaler, train_loader, val_loader, logger, bar)
        try:
            self._loop(*state, start)
        except DiskFullError as exc:
            if self.checkpoint_path is None:
                raise
            raise DiskFullError(exc.path, exc.kept, "free some space and continue the run with "
                                "--resume auto", exc.reason) from None
        except (DatasetError, RuntimeError) as exc:
            # A worker's error, or its death (reported wherever the trainer happens to be).
            fault = data_fault(exc, self.indexed_train)
            if not isinstance(fault, DatasetError):
                raise
            last = (f"the last checkpoint, {self.checkpoint_path}, is intact: fix or remove the file "
                    "and continue with --resume auto" if self.checkpoint_path is not None
                    else "no checkpoint was written yet")
            raise DatasetError(f"training stopped at step {self.position.step + 1}: {fault} ({last}; "
                               "data.skip_bad_samples=true trains on the next sample instead)") from None
        except KeyboardInterrupt:
            status = "interrupted"
            optimizer.zero_grad(set_to_none=True)
            # Every rank saves together when they agreed to stop at this step; a second signal
            # ("stop at once") may have caught the ranks apart, so then the main one saves alone.
            if self.is_main or self.agreed_stop:
                self._save(optimizer, schedule, scaler, start, export=False,
                           gather=self.agreed_stop)
                logger.log("event", self.position.step, event="interrupted",
                           checkpoint=str(self.checkpoint_path))
        finally:
            bar.close()
        if status == "completed":
            latest = self.last_val if self.selection.mode == VAL else self.last_select
            if self.selection.mode != LAST and (latest is None
                                                or latest.get("step") != self.position.step):
                self._validate(val_loader, logger)
            self._save(optimizer, schedule, scaler, start, export=True)
            if self.selection.mode != VAL:
                self._report_once(val_loader, logger)
        seconds = self.elapsed_before + time.perf_counter() - start
        if self.env.enabled:  # each rank counted what it read
            self.bad_samples = round(mean_over_ranks({"n": float(self.bad_samples)}, self.env,
                                                     self.device)["n"] * self.env.world_size)
        best = self.best if self.selection.mode == VAL else self.reported
        result = RunResult(self.run_dir, status, self.position.step, self.total_steps, best,
                           self.last_val, self.teacher_val, seconds, self.skipped,
                           self.checkpoint_path, self.best_weights, self.last_weights,
                           stopped_by=self.stop.requested if status == "interrupted" else None,
                           extra={"validation": AGREEMENT if self.agreement else "labelled"})
        if self.is_main:
            self._write_summary(result)
        return result

    def _loop(self, model, optimizer, schedule, scaler, train_loader, val_loader, logger, bar,
              start: float) -> None:
        pos = self.position
        per_epoch_batches = self.steps_per_epoch * self.accum
        window: dict[str, float] = defaultdict(float)
        window_steps = 0
        while pos.step < self.total_steps:
            self._check_stop()
            self.sampler.set_epoch(pos.epoch, skip=pos.batch * self.batch_size)
            batches = iter(train_loader)
            unlabelled = None
            if self.stream is not None:
                per = self.unlabelled_per_batch
                self.stream.set_window((pos.epoch * per_epoch_batches + pos.batch) * per,
                                       (per_epoch_batches - pos.batch) * per)
                unlabelled = iter(self.unlabelled_loader)
            self._set_train_mode()
            while pos.batch < per_epoch_batches and pos.step < self.total_steps:
                stats = self._train_step(model, optimizer, scaler, batches, unlabelled)
                pos.step += 1
                pos.batch += self.accum
                self.rng_at_step = capture_rng_state()  # an interrupt later resumes from here
                lr = schedule.current_lr()
                schedule.apply(pos.step)
                if stats is not None:
                    self.step_seconds += stats["step_time"]
                if stats is None:
                    self.skipped += 1
                    logger.log("event", pos.step, event="skipped_non_finite", epoch=pos.epoch,
                               skipped_total=self.skipped)
                else:
                    for key, value in stats.items():
                        window[key] += value
                    window_steps += 1
                shown: dict[str, float] = {}
                if window_steps and (pos.step % self.config.train.log_interval == 0
                                     or pos.step == self.total_steps):
                    averages = mean_over_ranks({k: v / window_steps for k, v in window.items()},
                                               self.env, self.device)
                    logger.log("train", pos.step, epoch=pos.epoch + pos.batch / per_epoch_batches,
                               lr=lr, **averages)
                    shown = {"loss": averages.get("loss", float("nan")), "lr": lr,
                             "images/s": averages.get("images_per_s", float("nan"))}
                    window.clear()
                    window_steps = 0
                bar.update(1, **shown)
                if self.on_step is not None:
                    self.on_step()
                if not self.by_epochs:
                    self._after_interval(pos.step, pos.step == self.total_steps, val_loader, logger,
                                         optimizer, schedule, scaler, start)
                if pos.step < self.total_steps:
                    self._check_stop()
            if pos.batch >= per_epoch_batches or pos.step >= self.total_steps:
                self._log_epoch_data(logger, pos.epoch, pos.batch)
            if pos.batch >= per_epoch_batches:
                pos.epoch += 1
                pos.batch = 0
                if self.by_epochs:
                    self._after_interval(pos.epoch, pos.step >= self.total_steps, val_loader,
                                         logger, optimizer, schedule, scaler, start)

    def _log_data_plan(self, logger: MetricsLogger) -> None:
        """Once per process start: how many images of each kind the run has, and which loss
        terms see only the labelled ones."""
        if self.unlabelled_set is None:
            return
        skipped = self.distiller.label_terms()
        logger.log("event", self.position.step, event="data", **self.data_counts,
                   unlabelled_per_batch=self.unlabelled_per_batch,
                   labelled_only_terms={"task": ["ce"], **{k: list(v) for k, v in skipped.items()}})
        if self.announce is not None and self.is_main and self.primary_labelled:
            terms = ["the task loss ce"] + [f"{name}'s {', '.join(t)}" for name, t in skipped.items()]
            self.announce(f"computed on labelled images only, skipped on unlabelled ones: "
                          f"{'; '.join(terms)}")
        elif self.announce is not None and self.is_main:
            self.announce("no labelled images: the task loss ce is 0 and every other term is "
                          "computed on the unlabelled images")

    def _log_epoch_data(self, logger: MetricsLogger, epoch: int, batches: int) -> None:
        """How many labelled and unlabelled images epoch ``epoch`` used (over every process),
        from its position alone, so a resumed epoch counts the same as an uninterrupted one."""
        if self.unlabelled_set is None:
            return
        drawn = batches * self.env.world_size
        labelled = drawn * self.batch_size if self.primary_labelled else 0
        unlabelled = drawn * (self.unlabelled_per_batch if self.primary_labelled else self.batch_size)
        logger.log("data", self.position.step, epoch=epoch, labelled_images=labelled,
                   unlabelled_images=unlabelled)
        if self.announce is not None and self.is_main:
            self.announce(f"epoch {epoch}: trained on {labelled} labelled and {unlabelled} "
                          f"unlabelled images")

    def _check_stop(self) -> None:
        """Stop here (a step boundary) if Ctrl-C or SIGTERM arrived on any process."""
        requested = self.stop.requested is not None
        if self.env.enabled:
            requested = any_true(requested, self.env, self.device)
        if requested:
            self.agreed_stop = True  # every rank raises here, at the same step
            raise KeyboardInterrupt

    def _after_interval(self, count: int, final: bool, val_loader, logger, optimizer, schedule,
                        scaler, start: float) -> None:
        """Validation and checkpoints every ``val_interval``/``checkpoint_interval`` epochs or
        iterations; the end of training is handled by :meth:`_fit`."""
        train = self.config.train
        if final:
            return
        if count % train.val_interval == 0:
            self._validate(val_loader, logger)
            self._set_train_mode()
        if count % train.checkpoint_interval == 0:
            self._save(optimizer, schedule, scaler, start, export=True)

    def _set_train_mode(self) -> None:
        self.distiller.train()
        if self.config.train.freeze_bn:
            freeze_batchnorm(self.distiller.student)
            freeze_batchnorm(self.distiller.methods)

    def _train_step(self, model, optimizer, scaler, batches, unlabelled=None) -> dict[str, float] | None:
        """One optimiser step over ``grad_accum`` micro-batches; None if skipped (non-finite)."""
        device, accum = self.device, self.accum
        sums: dict[str, torch.Tensor] = {}
        bad: tuple[str, float, int] | None = None
        data_time = 0.0
        step_start = time.perf_counter()
        autocast = (torch.autocast(device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else contextlib.nullcontext())
        for micro in range(accum):
            fetch = time.perf_counter()
            batch = next(batches)
            images, labels = batch["image"], batch["label"]
            labelled = None
            if unlabelled is not None:
                extra = next(unlabelled)
                labelled = torch.cat([torch.ones(len(images), dtype=torch.bool),
                                      torch.zeros(len(extra["image"]), dtype=torch.bool)])
                images = torch.cat([images, extra["image"]])
                labels = torch.cat([labels, extra["label"]])
            elif not self.primary_labelled:
                labelled = torch.zeros(len(images), dtype=torch.bool)
            data_time += time.perf_counter() - fetch
            skipped = [text for text in batch.get("skipped", ()) if text]
            if skipped:
                self.bad_samples += len(skipped)
                self.logger.log("event", self.position.step + 1, event="bad_samples_skipped",
                                count=len(skipped), errors=skipped, skipped_total=self.bad_samples)
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if labelled is not None:
                labelled = labelled.to(device, non_blocking=True)
            if images.dtype == torch.uint8:  # train.normalize_on_device: after the small copy
                images = self.primary_set.transform.deferred.batch(images)
            if self.config.train.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            sync = micro == accum - 1
            no_sync = model.no_sync() if (self.env.enabled and not sync) else contextlib.nullcontext()
            with no_sync:
                with autocast:
                    out = model(images, labels, labelled)
                terms = {k: v for k, v in out.items() if k != "logits"}
                finite = bool(torch.isfinite(terms["loss"]).item())
                if any_true(not finite, self.env, device):
                    if bad is None:
                        term = first_non_finite(terms) if not finite else ("loss (another process)",
                                                                           float("nan"))
                        bad = (*term, micro)
                    if self.env.enabled and sync:
                        self._zero_backward(model)  # DDP expects every rank to reduce this step
                    continue
                scaler.scale(terms["loss"] / accum).backward()
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value.detach().float() / accum
        if bad is not None:
            optimizer.zero_grad(set_to_none=True)
            if self.config.train.nonfinite == "stop":
                pos = self.position
                raise NonFiniteLossError(
                    f"training stopped: loss term {bad[0]!r} is {bad[1]} at step {pos.step + 1} "
                    f"(epoch {pos.epoch}, batch {pos.batch + bad[2] + 1} of "
                    f"{self.steps_per_epoch * accum}); the last good checkpoint is "
                    f"{self.checkpoint_path or 'not written yet'} (train.nonfinite=skip skips such steps)")
            return None
        if self.config.optim.grad_clip_norm is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                     self.config.optim.grad_clip_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        keys = list(sums)
        values = torch.stack([sums[k] for k in keys]).tolist() if keys else []
        stats = dict(zip(keys, values))
        stats["step_time"] = time.perf_counter() - step_start
        stats["data_time"] = data_time
        per_batch = self.batch_size + self.unlabelled_per_batch
        stats["images_per_s"] = per_batch * accum * self.env.world_size / stats["step_time"]
        return stats

    def _zero_backward(self, model) -> None:
        zero = sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
        zero.backward()

    # ------------------------------------------------------------------ evaluation

    def _evaluate(self, network: nn.Module, loader: DataLoader, per_image: bool = False
                  ) -> dict[str, Any]:
        started = time.perf_counter()
        reference = self.distiller.teacher_on_student_inputs() if self.agreement else None
        metrics = evaluate(network, loader, self.num_classes, self.config.protocol.ignore_index,
                           inference=self.inference, device=self.device, amp_dtype=self.amp_dtype,
                           progress=self.is_main and self.progress, reference=reference,
                           per_image=per_image and not self.env.enabled,
                           void_false_negative=self.config.protocol.void_prediction_false_negative)
        metrics["eval_seconds"] = time.perf_counter() - started
        return metrics

    def _validate(self, loader: DataLoader, logger: MetricsLogger) -> dict[str, Any] | None:
        """Score the selection split and keep the best checkpoint in best/ (``val``: the
        validation split itself, as runs always did; ``last``: nothing to score)."""
        if self.selection.mode == LAST:
            return None
        on_val = self.selection.mode == VAL
        metrics = self._evaluate(self.distiller.student, loader if on_val else self.select_loader,
                                 per_image=on_val)
        per_image = metrics.pop("per_image_confusion", None)
        pos = self.position
        metrics.update(step=pos.step, epoch=pos.epoch)
        if on_val:
            self.last_val = metrics
            logger.log("agreement" if self.agreement else "val", pos.step, **_public(metrics))
        else:
            self.last_select = metrics
            logger.log("select", pos.step, split=self.selection.mode, **_public(metrics))
        if self.best is None or _better(metrics["miou"], self.best["miou"]):
            self.best = {k: metrics[k] for k in ("miou", "acc", "macc", "iou", "step", "epoch")}
            if not on_val:  # every process scores it on the reported split at the end
                self.best_state = {k: v.detach().to("cpu", copy=True)
                                   for k, v in self.distiller.student.state_dict().items()}
            if self.is_main:
                self.best_weights = self._export("best")
                if per_image is not None:
                    self._save_per_image(per_image)
        if self.announce is not None and self.is_main and self.agreement:
            self.announce(f"step {pos.step}/{self.total_steps} (epoch {pos.epoch}): agreement with "
                          f"teacher {100 * metrics['miou']:.2f}% (mIoU of student vs teacher "
                          f"predictions), pixel agreement {100 * metrics['acc']:.2f}% "
                          f"(best {100 * self.best['miou']:.2f}% at step {self.best['step']})")
        elif self.announce is not None and self.is_main:
            split = "val" if on_val else "selection (train_holdout)"
            self.announce(f"step {pos.step}/{self.total_steps} (epoch {pos.epoch}): {split} mIoU "
                          f"{100 * metrics['miou']:.2f}%, pixel acc {100 * metrics['acc']:.2f}% "
                          f"(best {100 * self.best['miou']:.2f}% at step {self.best['step']})")
        return metrics

    def _report_once(self, loader: DataLoader, logger: MetricsLogger) -> None:
        """Evaluate the reported split once, at the end: the selected checkpoint (train_holdout)
        or the last one (last); nothing on it chose anything."""
        pos = self.position
        last = self._evaluate(self.distiller.student, loader, per_image=True)
        last.update(step=pos.step, epoch=pos.epoch)
        last_images = last.pop("per_image_confusion", None)
        self.last_val = last
        chosen, chosen_images = last, last_images
        if (self.selection.mode == HOLDOUT and self.best is not None
                and self.best["step"] != pos.step and self.best_state is not None):
            network = copy.deepcopy(self.distiller.student)
            network.load_state_dict(self.best_state)
            chosen = self._evaluate(network, loader, per_image=True)
            chosen.update(step=self.best["step"], epoch=self.best["epoch"])
            chosen_images = chosen.pop("per_image_confusion", None)
        elif self.selection.mode == LAST and self.is_main:
            self.best_weights = self._export("best")  # best/ is the reported network: the last
        for which, metrics in (("last", last), ("best", chosen)):
            fields = {k: v for k, v in _public(metrics).items() if k not in ("step", "epoch")}
            logger.log("agreement" if self.agreement else "val", pos.step, checkpoint=which,
                       checkpoint_step=metrics["step"],
                       reported=True, **fields)
            if chosen is last:
                break
        self.reported = {k: chosen[k] for k in ("miou", "acc", "macc", "iou", "step", "epoch")}
        if self.selection.mode == HOLDOUT and self.best is not None:
            self.reported["selected_on"] = {"split": HOLDOUT, "miou": self.best["miou"]}
        if self.is_main and chosen_images is not None:
            self._save_per_image(chosen_images)
        if self.announce is not None and self.is_main:
            self.announce(f"reported val mIoU {100 * chosen['miou']:.2f}% of the checkpoint at step "
                          f"{chosen['step']} ({self.selection_label}), evaluated once")

    @property
    def selection_label(self) -> str:
        held = len(self.select_set) if self.select_set is not None else None
        return self.selection.label(self.config.data.val_split, held)

    def _save_per_image(self, confusion: torch.Tensor) -> None:
        """Per-image confusion matrices of the reported checkpoint on the reported split, for the
        report's confidence intervals (resampling images)."""
        path = self.run_dir / PER_IMAGE_DIR / f"{self.config.data.val_split}.npz"
        atomic_write(path, lambda tmp: _savez(tmp, confusion.numpy()))

    # ------------------------------------------------------------------ checkpoints

    def _export(self, which: str) -> Path:
        meta = dict(self.metadata)
        meta.update(step=self.position.step, epoch=self.position.epoch)
        if self.last_val is not None:  # agreement_miou: measured against the teacher, not labels
            meta["agreement_miou" if self.agreement else "val_miou"] = json_safe(self.last_val["miou"])
        adapters = self.distiller.methods if len(self.distiller.methods) else None
        return export_weights(self.distiller.student, adapters, self.run_dir / which, meta)

    def _rank_rng_states(self) -> list[dict[str, Any]]:
        """Every rank's RNG state at the last step (a collective: all ranks call it)."""
        if not self.env.enabled:
            return [self.rng_at_step]
        states: list[Any] = [None] * self.env.world_size
        torch.distributed.all_gather_object(states, self.rng_at_step)
        return states

    def _save(self, optimizer, schedule, scaler, start: float, export: bool, gather: bool = True) -> None:
        """Write the checkpoint (main process). Called on every rank, at the same step, so that
        it holds every rank's random state (dropout and drop-path draws differ per rank): a run
        resumed on the same number of processes then continues exactly. ``gather=False`` only
        when the ranks may be apart (a second "stop at once" signal)."""
        rng_ranks = self._rank_rng_states() if gather else [self.rng_at_step]
        if not self.is_main:
            return
        checkpoint = {
            "model": self.distiller.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "rng": self.rng_at_step,
            "rng_ranks": rng_ranks if len(rng_ranks) > 1 else None,
            "position": {"step": self.position.step, "epoch": self.position.epoch,
                         "batch": self.position.batch},
            "best": self.best,
            "teacher_val": _public(self.teacher_val) if self.teacher_val else None,
            "skipped_steps": self.skipped,
            "bad_samples": self.bad_samples,
            "elapsed_seconds": self.elapsed_before + time.perf_counter() - start,
            "step_seconds": self.step_seconds,
            "total_steps": self.total_steps,
            "budget": self.budget_record,
            "best_student": self.best_state,  # the held-out selection's choice, scored at the end
            "method": self.distiller.method_name,
            "student": getattr(self.distiller.student, "model_name", None),
        }
        self.checkpoint_path = save_checkpoint(self.run_dir / "checkpoints" / "last.pt", checkpoint,
                                               keep=self.config.train.keep_checkpoints)
        if export:
            self.last_weights = self._export("last")

    def _load(self, path: Path, optimizer, schedule, scaler) -> dict[str, Any]:
        checkpoint = load_checkpoint(path)
        if checkpoint.get("method") != self.distiller.method_name:
            raise TranskdError(f"--resume {path}: the checkpoint was trained with method "
                               f"{checkpoint.get('method')!r}, this run uses "
                               f"{self.distiller.method_name!r}")
        load_state_strict(self.distiller, checkpoint["model"], source=str(path))
        check_resumable(checkpoint["optimizer"]["param_groups"], optimizer.param_groups, str(path))
        optimizer.load_state_dict(checkpoint["optimizer"])
        schedule.load_state_dict(checkpoint["schedule"])
        if checkpoint.get("scaler") is not None and scaler.is_enabled():
            scaler.load_state_dict(checkpoint["scaler"])
        position = checkpoint["position"]
        self.position = Position(int(position["step"]), int(position["epoch"]), int(position["batch"]))
        self.best = checkpoint.get("best")
        self.teacher_val = checkpoint.get("teacher_val")
        self.skipped = int(checkpoint.get("skipped_steps", 0))
        self.bad_samples = int(checkpoint.get("bad_samples", 0))
        self.elapsed_before = float(checkpoint.get("elapsed_seconds", 0.0))
        self.step_seconds = float(checkpoint.get("step_seconds", 0.0))
        self.best_state = checkpoint.get("best_student")
        self.checkpoint_path = Path(path)
        if self.best is not None and self.run_dir is not None:  # exported when that best was scored
            best = self.run_dir / "best" / deployable_file_name(distilled=len(self.distiller.methods) > 0)
            self.best_weights = best if best.is_file() else None
        ranks = checkpoint.get("rng_ranks")
        if ranks and len(ranks) == self.env.world_size:
            return ranks[self.env.rank]
        return checkpoint["rng"]  # rank 0's state: another process count, or an older checkpoint

    def _compute_record(self, result: RunResult) -> dict[str, Any]:
        """Wall time, time per optimiser step and training MACs (convention in the record)."""
        steps = max(result.steps - result.skipped_steps, 0)
        per_step = self.compute.get("per_step")
        return {**self.compute,
                "wall_seconds": round(result.train_seconds, 3),
                "step_seconds": round(self.step_seconds, 3),
                "seconds_per_step": self.step_seconds / steps if steps else None,
                "train_macs": per_step * result.steps if per_step else None,
                "peak_gpu_memory_mb": self._peak_gpu_memory_mb()}

    def _peak_gpu_memory_mb(self) -> float | None:
        """This process's peak allocated GPU memory (MiB); None off CUDA. It is what a GPU check
        compares between precisions, so it counts tensors, not the allocator's reserve."""
        if self.device.type != "cuda":
            return None
        return round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)

    def _write_summary(self, result: RunResult) -> None:
        summary = {
            "status": result.status,
            "validation": result.extra.get("validation", "labelled"),
            "steps": result.steps,
            "total_steps": result.total_steps,
            "train_seconds": round(result.train_seconds, 3),
            "skipped_steps": result.skipped_steps,
            "bad_samples_skipped": self.bad_samples,
            "best": result.best,
            "selection": {"mode": self.selection.mode, "fraction": self.selection.fraction or None,
                          "seed": self.selection.seed if self.selection.mode == HOLDOUT else None,
                          "images": len(self.select_set) if self.select_set is not None else None,
                          "label": self.selection_label},
            "reported_split": self.config.data.val_split,
            "per_image_confusion": (f"{PER_IMAGE_DIR}/{self.config.data.val_split}.npz"
                                    if (self.run_dir / PER_IMAGE_DIR
                                        / f"{self.config.data.val_split}.npz").is_file() else None),
            "compute": self._compute_record(result),
            "budget": self.budget_record,
            "last_val": _public(result.last_val) if result.last_val else None,
            "teacher_val": _public(result.teacher_val) if result.teacher_val else None,
            "checkpoint": str(result.checkpoint) if result.checkpoint else None,
            "best_weights": str(result.best_weights) if result.best_weights else None,
            "last_weights": str(result.last_weights) if result.last_weights else None,
            **{k: v for k, v in self.metadata.items() if k not in ("palette",)},
        }
        text = json.dumps(json_safe(summary), indent=2)
        (self.run_dir / "summary.json").write_text(text + "\n", encoding="utf-8")


def _savez(path: str, confusion: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.savez_compressed(handle, confusion=confusion)


def _public(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """Metrics without the confusion tensor (JSON-able); the matrix goes in as nested lists."""
    if metrics is None:
        return {}
    out = {k: v for k, v in metrics.items() if k != "confusion"}
    confusion = metrics.get("confusion")
    if isinstance(confusion, torch.Tensor):
        out["confusion"] = confusion.tolist()
    return out


def _better(value: float, best: float) -> bool:
    if math.isnan(value):
        return False
    return math.isnan(best) or value > best
